"""The trainer's pure core: training files, the job state machine, digests, ids, bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libs.signing import ensure_key_pair, load_private_key, trusted_keys
from services.trainer import bundle, jobs
from services.trainer.identity import (
    AdapterRef,
    NotFound,
    adapter_digest,
    file_digest,
    parse_public_id,
    public_id,
    resolve,
)
from services.trainer.training_file import TrainingFileError, parse_training_file, split_held_out


def line(*pairs: tuple[str, str], **extra: object) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs], **extra})


GOOD = line(("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris."))


# -- training files --


def test_a_valid_file_gives_its_examples_with_line_numbers() -> None:
    text = "\n".join([GOOD, "", line(("user", "Hi"), ("assistant", "Hello"))]) + "\n"
    examples = parse_training_file(text.encode())
    assert [e.line for e in examples] == [1, 3]
    assert examples[0].messages[2].content == "Paris."
    assert examples[1].messages[0].role == "user"


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"messages": []}', "non-empty list"),
        (line(("user", "Hi")), "assistant message"),
        (line(("assistant", "Hi")), "user message"),
        (line(("robot", "Hi"), ("assistant", "x")), "role must be one of"),
        (
            '{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}',
            "content must be a string",
        ),
        (
            '{"messages": [{"role": "user", "content": "q", "weight": 1},'
            ' {"role": "assistant", "content": "x"}]}',
            "only allowed on assistant",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"},'
            ' {"role": "assistant", "content": "x", "weight": 0}]}',
            "weight 1",
        ),
        (line(("user", "q"), ("assistant", "  ")), "empty content"),
    ],
)
def test_each_bad_line_is_named(bad: str, says: str) -> None:
    with pytest.raises(TrainingFileError) as info:
        parse_training_file("\n".join([GOOD, GOOD, bad, GOOD]))
    assert [e.line for e in info.value.errors] == [3]
    assert says in info.value.errors[0].message
    assert "line 3:" in str(info.value)


def test_every_bad_line_is_reported_not_only_the_first() -> None:
    with pytest.raises(TrainingFileError) as info:
        parse_training_file("\n".join(["{", GOOD, "[]", GOOD, "x"]))
    assert [e.line for e in info.value.errors] == [1, 3, 5]


def test_non_utf8_and_too_few_examples_are_refused() -> None:
    with pytest.raises(TrainingFileError, match="not UTF-8"):
        parse_training_file(b"\xff\xfe")
    with pytest.raises(TrainingFileError, match="at least 10"):
        parse_training_file(GOOD, min_examples=10)


def test_held_out_split_is_deterministic_and_disjoint() -> None:
    examples = parse_training_file("\n".join([GOOD] * 10))
    train, held = split_held_out(examples)
    assert len(held) == 2 and len(train) == 8
    assert {e.line for e in held} == {5, 10}
    assert split_held_out(examples) == (train, held)


# -- the job state machine --


def test_a_job_goes_through_its_states_with_an_event_each() -> None:
    job, created = jobs.new_job(
        tenant="acme", model="smollm2-135m-instruct", training_file="file-1", now=100, seed=7
    )
    assert job.status == "validating_files" and created.message.startswith("Created")
    job, e1 = jobs.transition(job, "queued", 101)
    job, e2 = jobs.transition(job, "running", 102)
    job, e3 = jobs.transition(
        job,
        "succeeded",
        150,
        fine_tuned_model="acme/smollm2-135m-instruct:ft-v1",
        trained_tokens=1234,
        result_files=["file-r"],
    )
    assert [e.data["status"] for e in (e1, e2, e3)] == ["queued", "running", "succeeded"]
    assert job.finished_at == 150 and job.terminal
    out = job.public()
    assert out["object"] == "fine_tuning.job" and out["status"] == "succeeded"
    assert out["fine_tuned_model"] == "acme/smollm2-135m-instruct:ft-v1"
    assert out["method"]["type"] == "supervised"
    assert "tenant" not in out and "trained_by" not in out
    assert out["id"].startswith("ftjob-") and out["seed"] == 7


def test_illegal_transitions_are_refused() -> None:
    job, _ = jobs.new_job(tenant="a", model="m", training_file="f", now=1)
    with pytest.raises(jobs.IllegalTransition):
        jobs.transition(job, "succeeded", 2, fine_tuned_model="x")
    with pytest.raises(jobs.IllegalTransition, match="needs an error"):
        jobs.transition(job, "failed", 2)
    done, _ = jobs.transition(job, "cancelled", 2)
    for to in ("queued", "running", "failed", "cancelled"):
        with pytest.raises(jobs.IllegalTransition):
            jobs.transition(done, to, 3, error=jobs.JobError(code="x", message="y"))
    failed, ev = jobs.transition(
        job, "failed", 2, error=jobs.JobError(code="invalid_training_file", message="line 3: bad")
    )
    assert ev.level == "error" and failed.error is not None
    assert failed.public()["error"]["code"] == "invalid_training_file"


def test_checkpoints_carry_step_and_metrics() -> None:
    job, _ = jobs.new_job(tenant="a", model="m", training_file="f", now=1)
    cp = jobs.checkpoint(job, 5, 10, {"train_loss": 1.5}, "a/m:ft-v1")
    assert cp.object == "fine_tuning.job.checkpoint" and cp.fine_tuning_job_id == job.id
    assert cp.metrics == {"step": 10.0, "train_loss": 1.5}
    assert cp.fine_tuned_model_checkpoint == "a/m:ft-v1:ckpt-step-10"


# -- digests and public ids --


def test_adapter_digest_is_deterministic_and_changes_with_any_file() -> None:
    files = {"adapter.safetensors": file_digest(b"w"), "adapter_config.json": file_digest(b"{}")}
    d = adapter_digest(files)
    assert d.startswith("sha256:") and len(d) == 71
    assert adapter_digest(dict(reversed(list(files.items())))) == d
    assert adapter_digest({**files, "adapter.safetensors": file_digest(b"W")}) != d
    assert adapter_digest({**files, "adapter_config.json": file_digest(b"{ }")}) != d
    with pytest.raises(ValueError, match="adapter_config"):
        adapter_digest({"adapter.safetensors": file_digest(b"w")})


def test_public_ids_parse_and_resolve_to_base_and_digest_for_the_owner_only() -> None:
    assert public_id("acme", "smollm2-135m-instruct", 3) == "acme/smollm2-135m-instruct:ft-v3"
    pid = parse_public_id("acme/smollm2-135m-instruct:ft-v3")
    assert pid is not None and (pid.tenant, pid.base_model, pid.version) == (
        "acme",
        "smollm2-135m-instruct",
        3,
    )
    assert parse_public_id("smollm2-135m-instruct") is None
    assert parse_public_id("acme/x:ft-v0") is None
    with pytest.raises(ValueError):
        public_id("ac/me", "m", 1)
    rows = [
        AdapterRef("acme", "base", 1, "sha256:" + "1" * 64, "retired"),
        AdapterRef("acme", "base", 2, "sha256:" + "2" * 64, "promoted"),
        AdapterRef("acme", "base", 3, "sha256:" + "3" * 64, "refused"),
        AdapterRef("other", "base", 1, "sha256:" + "9" * 64, "promoted"),
    ]
    r = resolve("acme/base:ft-v1", "acme", rows)
    assert (r.base_model, r.digest, r.version) == ("base", "sha256:" + "1" * 64, 1)
    assert resolve("acme/base:ft", "acme", rows).version == 2
    assert resolve("acme/base:ft-v3", "acme", rows).digest.endswith("3" * 64)
    # Another tenant's adapter is exactly as unknown as a missing one.
    with pytest.raises(NotFound, match="does not exist"):
        resolve("acme/base:ft-v1", "other", rows)
    with pytest.raises(NotFound, match="does not exist"):
        resolve("acme/base:ft-v4", "acme", rows)


# -- signed bundles --


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.ed25519", tmp_path / "k.pub"
    assert ensure_key_pair(private, public)
    assert not ensure_key_pair(private, public)  # never overwritten
    assert (private.stat().st_mode & 0o777) == 0o600
    return private, public


def _bundle(private: Path) -> dict[str, bytes]:
    return bundle.build(
        {"adapter.safetensors": b"weights", "adapter_config.json": b'{"r": 8}'},
        {"held_out_loss": {"before": 2.0, "after": 1.0}},
        {"tenant": "acme", "base_model": "base", "version": 1},
        load_private_key(private),
    )


def test_a_signed_bundle_verifies_and_names_its_digest(keys: tuple[Path, Path]) -> None:
    files = _bundle(keys[0])
    got = bundle.verify(files, trusted_keys([keys[1]]))
    assert got.digest == adapter_digest(
        {
            "adapter.safetensors": file_digest(b"weights"),
            "adapter_config.json": file_digest(b'{"r": 8}'),
        }
    )
    assert got.metadata["tenant"] == "acme" and got.metadata["digest"] == got.digest
    assert got.eval_report["held_out_loss"]["after"] == 1.0
    assert _bundle(keys[0])["manifest.json"] == files["manifest.json"]  # deterministic


def test_unsigned_altered_or_foreign_bundles_are_refused(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    files = _bundle(keys[0])
    trusted = trusted_keys([keys[1]])
    unsigned = {k: v for k, v in files.items() if k != "signature.json"}
    with pytest.raises(bundle.BundleError, match="unsigned"):
        bundle.verify(unsigned, trusted)
    with pytest.raises(bundle.BundleError, match=r"adapter\.safetensors was altered"):
        bundle.verify({**files, "adapter.safetensors": b"weightz"}, trusted)
    with pytest.raises(bundle.BundleError, match="altered"):
        bundle.verify({**files, "metadata.json": b'{"tenant": "evil"}'}, trusted)
    with pytest.raises(bundle.BundleError, match="extra"):
        bundle.verify({**files, "payload.py": b"import os"}, trusted)
    # A manifest rewritten to match altered weights no longer matches its signature.
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["adapter.safetensors"] = file_digest(b"weightz")
    forged = {
        **files,
        "adapter.safetensors": b"weightz",
        "manifest.json": json.dumps(manifest).encode(),
    }
    with pytest.raises(bundle.BundleError, match="bad signature"):
        bundle.verify(forged, trusted)
    # Signed by a key the verifier does not trust.
    other_private, other_public = tmp_path / "o.ed25519", tmp_path / "o.pub"
    ensure_key_pair(other_private, other_public)
    with pytest.raises(bundle.BundleError, match="untrusted"):
        bundle.verify(_bundle(other_private), trusted)
    assert bundle.verify(_bundle(other_private), trusted_keys([keys[1], other_public]))


def test_auto_hyperparameters_aim_at_the_target_steps() -> None:
    auto = jobs.Hyperparameters()
    hp = jobs.resolve_hyperparameters(auto, 6, target_steps=30)
    assert (hp.batch_size, hp.n_epochs, hp.learning_rate_multiplier) == (1, 5, 1.0)
    hp = jobs.resolve_hyperparameters(auto, 100, target_steps=30)
    assert (hp.batch_size, hp.n_epochs) == (4, 2)  # 25 batches an epoch
    given = jobs.Hyperparameters(n_epochs=3, batch_size=8, learning_rate_multiplier=0.5)
    hp = jobs.resolve_hyperparameters(given, 4)
    assert (hp.batch_size, hp.n_epochs, hp.learning_rate_multiplier) == (4, 3, 0.5)
