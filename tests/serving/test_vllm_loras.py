"""The vLLM adapter's LoRA requests, by contract (vLLM itself needs a GPU and its own
environment): name and id from the digest, only verified bundles of the caller's tenant,
written in peft's layout; a reload under one public name is another digest, hence another
id (vllm 42125), and two tenants' adapters never share one (vllm 47724)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libs.adapter_bundle import build, bundle_path
from libs.context import RequestContext
from libs.events import GenerateRequest
from libs.signing import ensure_key_pair, load_private_key, trusted_keys
from services.inference_router.adapter_choice import AdapterRefused
from services.inference_router.adapters.adapter_store import AdapterStore
from services.inference_router.adapters.vllm import LoraSource

BASE = "llama-3-8b"


def signed(home: Path, tenant: str, weights: bytes, base: str = BASE) -> str:
    files = {"adapter.safetensors": weights, "adapter_config.json": b'{"r": 8}'}
    key = load_private_key(home / "trainer.ed25519")
    bundle = build(files, {}, {"tenant": tenant, "base_model": base}, key)
    digest = str(json.loads(bundle["manifest.json"])["digest"])
    target = bundle_path(home / "adapters", tenant, digest)
    target.mkdir(parents=True)
    for name, data in bundle.items():
        (target / name).write_bytes(data)
    return digest


def req(tenant: str, adapter: str | None) -> GenerateRequest:
    return GenerateRequest(
        ctx=RequestContext(tenant=tenant, request_id="r"),
        model=BASE,
        deltas_subject="unused",
        adapter=adapter,
    )


@pytest.fixture
def source(tmp_path: Path) -> LoraSource:
    ensure_key_pair(tmp_path / "trainer.ed25519", tmp_path / "trainer.pub")
    store = AdapterStore(tmp_path / "adapters", trusted_keys([tmp_path / "trainer.pub"]), BASE)
    return LoraSource(store, tmp_path / "vllm-loras")


def test_lora_name_id_and_path_come_from_the_verified_digest(
    source: LoraSource, tmp_path: Path
) -> None:
    v1 = signed(tmp_path, "acme", b"weights v1")
    v2 = signed(tmp_path, "acme", b"weights v2")  # acme's `:ft` reloaded: new weights
    g1 = signed(tmp_path, "globex", b"globex weights")
    assert source.lora(req("acme", None)) is None
    name1, id1, path1 = source.lora(req("acme", v1)) or ("", 0, "")
    name2, id2, _ = source.lora(req("acme", v2)) or ("", 0, "")
    name3, id3, _ = source.lora(req("globex", g1)) or ("", 0, "")
    assert (name1, name2, name3) == (v1, v2, g1)
    assert len({id1, id2, id3}) == 3 and min(id1, id2, id3) >= 1
    assert source.lora(req("acme", v1)) == (name1, id1, path1)  # stable
    assert Path(path1).name == v1.removeprefix("sha256:")
    assert (Path(path1) / "adapter_model.safetensors").read_bytes() == b"weights v1"
    assert json.loads((Path(path1) / "adapter_config.json").read_text()) == {"r": 8}


def test_refused_unsigned_altered_foreign_and_aliases(source: LoraSource, tmp_path: Path) -> None:
    altered = signed(tmp_path, "acme", b"good")
    (bundle_path(tmp_path / "adapters", "acme", altered) / "adapter.safetensors").write_bytes(
        b"evil"
    )
    unsigned = signed(tmp_path, "acme", b"unsigned")
    (bundle_path(tmp_path / "adapters", "acme", unsigned) / "signature.json").unlink()
    globex = signed(tmp_path, "globex", b"theirs")
    other_base = signed(tmp_path, "acme", b"other base", base="mistral-7b")
    cases = [
        (req("acme", altered), "altered"),
        (req("acme", unsigned), "unsigned"),
        (req("acme", globex), "not on this worker"),  # acme asks for globex's digest
        (req("acme", other_base), "trained on"),
        (req("acme", f"acme/{BASE}:ft"), "digest only"),
        (req("acme", "acme-support"), "digest"),
    ]
    for request, why in cases:
        with pytest.raises(AdapterRefused, match=why):
            source.lora(request)
    assert not (tmp_path / "vllm-loras" / altered.removeprefix("sha256:")).exists()
