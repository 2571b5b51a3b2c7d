"""docs/asyncapi.json: the committed document is what libs/asyncapi.py generates now (it
cannot go stale), it is valid AsyncAPI 3.0 (the specification's own JSON schema, from
npm's @asyncapi/specs 6.11.1, shipped in tests/deploy/schemas), it covers every subject
the services name and every versioned event, and the gateway serves it."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel

from libs import asyncapi, events
from libs.bus import stream_configs
from libs.settings import Settings
from libs.subjects import Subjects
from tests.infra import REPO, Infra, Platform, free_port, platform_env

SCHEMA = Path(__file__).parent / "schemas" / "asyncapi-3.0.0.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(asyncapi.DOCUMENT.read_text())
    return loaded


def test_the_committed_document_is_a_fresh_generation() -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), (
        "docs/asyncapi.json is stale: run `python -m libs.asyncapi`"
    )


def test_it_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors[:5]
    # The schema bites: an operation with an action AsyncAPI 3 does not have is refused.
    broken = copy.deepcopy(doc)
    broken["operations"]["sendChatRequested"]["action"] = "publish"
    assert list(validator.iter_errors(broken))
    assert doc["asyncapi"] == "3.0.0"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert len(refs) > 50
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert node is not None, ref


def test_every_subject_is_a_channel(doc: dict[str, Any]) -> None:
    covered = {c.subject for c in asyncapi.CHANNELS} | {
        w for c in asyncapi.CHANNELS for w in c.wildcards
    }
    assert asyncapi.subject_members() - covered == set(), "a subject without a channel"
    addresses = {c["address"] for c in doc["channels"].values() if c["address"]}
    subjects = Subjects()
    assert subjects.chat_requested in addresses
    assert subjects.inference_worker("{pool}") in addresses
    assert subjects.audit("{tenant}", "{kind}") in addresses
    # Every subject the services' code names (FastStream or raw nats-py) is in it.
    named: set[str] = set()
    for path in (REPO / "services").rglob("*.py"):
        named |= set(re.findall(r"\bsubjects\.([a-z_]+)", path.read_text()))
    assert named, "the services name no subjects?"
    assert named - covered - set(asyncapi.STREAM_MEMBERS) == set()


def test_raw_subscriptions_and_queue_groups_are_described(doc: dict[str, Any]) -> None:
    ops = doc["operations"]
    raw = {name for name, op in ops.items() if op.get("x-enclave-client") == "nats-py"}
    assert {"receiveChatStream", "receiveInferenceDeltas", "receiveGuardrailsInput"} <= raw
    assert ops["receiveChatStream"]["x-enclave-subscribe"] == "chat.stream.{gateway}.*"
    assert ops["receiveInferenceWorker"]["bindings"]["nats"]["queue"] == "{pool}"
    assert ops["receiveGuardrailsInput"]["reply"]["messages"] == [
        {"$ref": "#/channels/replyInbox/messages/GuardrailVerdict"}
    ]
    streams = {c.name: list(c.subjects or []) for c in stream_configs(Settings())}
    for name, op in ops.items():
        if "x-enclave-jetstream" in op:
            js = op["x-enclave-jetstream"]
            assert js["stream"] in streams, name
            address = doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
            prefix = streams[js["stream"]][0].removesuffix(">")
            assert address.startswith(prefix), name
    assert {
        op["x-enclave-jetstream"]["durable"] for op in ops.values() if "x-enclave-jetstream" in op
    } == {
        "agent_runtime",
        "agent_runtime_resume",
        "memory",
        "audit",
        "trainer",
    }


def test_every_versioned_event_is_on_a_channel(doc: dict[str, Any]) -> None:
    versioned = {
        name
        for name, obj in vars(events).items()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == events.__name__
        and "v" in obj.model_fields
    }
    assert len(versioned) > 20
    assert versioned - set(doc["components"]["messages"]) == set()
    # Payloads are the pydantic schemas: the turn event's fields are all there.
    turn = doc["components"]["schemas"]["TurnEvent"]["properties"]
    assert set(events.TurnEvent.model_fields) == set(turn)


def test_the_gateway_serves_it(services: Infra, tmp_path: Path) -> None:
    port = free_port()
    plat = Platform(
        env=platform_env(services, tmp_path, port),
        home=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
    )
    try:
        plat.cli("migrate")
        plat.start("gateway", "gateway")
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(plat.base_url + "/asyncapi.json", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, plat.logs()[-3000:]
                time.sleep(0.3)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        assert r.text == asyncapi.DOCUMENT.read_text()
    finally:
        plat.stop_all()
