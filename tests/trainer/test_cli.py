"""`enclave adapters export / import / list / rollback`: a signed bundle moves from one
site to another (as into an air-gapped one) only with the signer's key and unaltered."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest

from libs.db.engine import make_engine, migrate_async
from libs.settings import Settings
from libs.signing import ensure_key_pair, load_private_key
from services.cli import main
from services.trainer import bundle
from services.trainer.adapters.bundles import BundleDir
from services.trainer.adapters.sql import TrainerStore

BASE = "smollm2-135m-instruct"


async def _train_fake(home: Path, weights: bytes, status: str) -> None:
    """A registered version as the trainer leaves it (the weights are not loaded here)."""
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home)
    await migrate_async(settings)
    ensure_key_pair(home / "trainer.ed25519", home / "trainer.pub")
    store = TrainerStore(make_engine(settings.sqlalchemy_url))
    version = await store.next_version("acme", BASE)
    files = bundle.build(
        {"adapter.safetensors": weights, "adapter_config.json": b'{"r": 8}'},
        {"held_out_loss": {"before": 2.0, "after": 0.5}},
        {"tenant": "acme", "base_model": BASE, "public_id": f"acme/{BASE}:ft-v{version}"},
        load_private_key(home / "trainer.ed25519"),
    )
    digest = json.loads(files["manifest.json"])["digest"]
    path = BundleDir(home / "adapters").write("acme", digest, files)
    await store.add_adapter(
        tenant="acme",
        base_model=BASE,
        digest=digest,
        job_id="ftjob-x",
        trained_by="k",
        eval_report={"held_out_loss": {"before": 2.0, "after": 0.5}},
        meta={},
        bundle_path=str(path),
        status=status,
        status_reason="",
        version=version,
    )
    await store.engine.dispose()


def enclave(monkeypatch: pytest.MonkeyPatch, home: Path, *args: str) -> int:
    monkeypatch.setenv("ENCLAVE_HOME", str(home))
    monkeypatch.delenv("ENCLAVE_DATABASE_URL", raising=False)
    return main(["adapters", *args])


def test_a_bundle_moves_between_sites_only_signed_and_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site_a, site_b = tmp_path / "a", tmp_path / "b"
    asyncio.run(_train_fake(site_a, b"weights-1", "promoted"))
    asyncio.run(_train_fake(site_a, b"weights-2", "promoted"))
    out = tmp_path / "v1.tar"
    v1 = f"acme/{BASE}:ft-v1"
    assert (
        enclave(monkeypatch, site_a, "export", "--tenant", "acme", "--model", v1, "--out", str(out))
        == 0
    )
    assert "signed by ed25519:" in capsys.readouterr().out
    # Another tenant cannot export acme's adapter.
    elsewhere = str(tmp_path / "x.tar")
    assert (
        enclave(
            monkeypatch, site_a, "export", "--tenant", "other", "--model", v1, "--out", elsewhere
        )
        == 1
    )

    # Site B does not trust site A's key until told to.
    assert enclave(monkeypatch, site_b, "import", str(out)) == 1
    assert "refused: signed by an untrusted" in capsys.readouterr().out
    # An altered bundle is refused even with the key.
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    altered = tmp_path / "altered.tar"
    with tarfile.open(altered, "w") as tar:
        for name, data in {**files, "adapter.safetensors": b"weights-X"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pub = str(site_a / "trainer.pub")
    assert enclave(monkeypatch, site_b, "import", str(altered), "--public-key", pub) == 1
    assert "adapter.safetensors was altered" in capsys.readouterr().out

    assert enclave(monkeypatch, site_b, "import", str(out), "--public-key", pub) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["id"] == f"acme/{BASE}:ft-v1" and imported["status"] == "ready"
    assert imported["digest"] == json.loads(files["manifest.json"])["digest"]
    assert list((site_b / "adapter-keys").glob("*.pub"))  # site B now trusts site A's key
    assert enclave(monkeypatch, site_b, "list", "--tenant", "acme") == 0
    assert f"acme/{BASE}:ft-v1  ready" in capsys.readouterr().out

    # Rollback on site A: v2 serves, v1 was promoted before it.
    assert enclave(monkeypatch, site_a, "rollback", "--tenant", "acme", "--base-model", BASE) == 0
    assert f"acme/{BASE}:ft-v1" in capsys.readouterr().out
    assert enclave(monkeypatch, site_a, "rollback", "--tenant", "acme", "--base-model", BASE) == 1
