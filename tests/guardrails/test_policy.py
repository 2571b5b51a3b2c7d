"""Policies: the hierarchy merges top-down, and every relaxing document is rejected at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.guardrails.adapters.policy_files import PolicyStore
from services.guardrails.policy import (
    PolicyError,
    PolicyRelaxed,
    effective,
    fill_document,
    parse_document,
)

GLOBAL: dict[str, Any] = {
    "version": 3,
    "level": "global",
    "pii": {
        "enabled": True,
        "min_score": 0.5,
        "entities": {"EMAIL_ADDRESS": "pseudonymise", "US_SSN": "block", "URL": "allow"},
        "custom": [{"name": "EMPLOYEE_ID", "patterns": [r"EMP-\d{6}"], "context": ["employee"]}],
    },
    "injection": {"enabled": True, "threshold": 0.6, "screen_context": True},
    "topics": {
        "allowed": ["billing", "support", "sales"],
        "denied": ["politics"],
        "deny_threshold": 0.6,
    },
    "secrets": {"enabled": True, "action": "redact", "min_entropy": 4.0},
    "output": {"pii_recheck": True, "entities": {"EMAIL_ADDRESS": "redact"}},
}


def doc(level: str, **sections: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"version": "7", "level": level, "tenant": "acme", **sections}
    if level == "agent":
        d["agent"] = "support"
    return d


def merged(tenant: dict[str, Any] | None = None, agent: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    return effective(
        parse_document(GLOBAL, "global"),
        parse_document(tenant, "tenant") if tenant else None,
        parse_document(agent, "agent") if agent else None,
    )


def test_hierarchy_merges_top_down_and_names_every_version() -> None:
    tenant = doc(
        "tenant",
        pii={
            "entities": {"EMAIL_ADDRESS": "redact", "PERSON": "pseudonymise"},
            "custom": [{"name": "PATIENT_ID", "patterns": [r"PAT\d{8}"], "action": "hash"}],
        },
        injection={"threshold": 0.5},
        topics={"allowed": ["billing", "support"], "denied": ["medical advice"]},
    )
    agent = doc(
        "agent",
        pii={"entities": {"PERSON": "block"}, "min_score": 0.4},
        topics={"allowed": ["billing"]},
        output={"denied_patterns": ["competitor"]},
    )
    p = merged(tenant, agent)
    assert p.entities["EMAIL_ADDRESS"] == "redact"  # tenant restricted global
    assert p.entities["PERSON"] == "block"  # agent restricted tenant
    assert p.entities["US_SSN"] == "block" and p.entities["URL"] == "allow"  # inherited
    assert p.entities["PATIENT_ID"] == "hash"
    assert set(p.custom) == {"EMPLOYEE_ID", "PATIENT_ID"}
    assert p.injection_threshold == 0.5 and p.min_score == 0.4
    assert p.topics_allowed == ["billing"]
    assert p.topics_denied == ["politics", "medical advice"]
    assert p.denied_patterns == ["competitor"]
    assert p.output_entities == {"EMAIL_ADDRESS": "redact"}
    assert p.version.startswith("global@3+tenant:acme@7+agent:acme/support@7+")
    # The digest part of the version changes with the content.
    assert merged(tenant).version != merged(tenant, agent).version


RELAXING = [
    ({"pii": {"entities": {"US_SSN": "redact"}}}, "pii.entities.US_SSN"),
    ({"pii": {"entities": {"EMAIL_ADDRESS": "allow"}}}, "pii.entities.EMAIL_ADDRESS"),
    ({"pii": {"enabled": False}}, "pii.enabled"),
    ({"pii": {"min_score": 0.9}}, "pii.min_score"),
    (
        {"pii": {"custom": [{"name": "EMPLOYEE_ID", "patterns": ["NEVER"]}]}},
        "pii.custom.EMPLOYEE_ID",
    ),
    ({"injection": {"threshold": 0.95}}, "injection.threshold"),
    ({"injection": {"enabled": False}}, "injection.enabled"),
    ({"injection": {"screen_context": False}}, "injection.screen_context"),
    ({"topics": {"allowed": ["billing", "gossip"]}}, "topics.allowed"),
    ({"topics": {"deny_threshold": 0.99}}, "topics.deny_threshold"),
    ({"secrets": {"enabled": False}}, "secrets.enabled"),
    ({"secrets": {"min_entropy": 6.0}}, "secrets.min_entropy"),
    ({"output": {"pii_recheck": False}}, "output.pii_recheck"),
    ({"output": {"entities": {"EMAIL_ADDRESS": "mask"}}}, "output.entities.EMAIL_ADDRESS"),
]


@pytest.mark.parametrize(("sections", "rule"), RELAXING)
def test_a_tenant_document_that_relaxes_is_rejected(sections: dict[str, Any], rule: str) -> None:
    with pytest.raises(PolicyRelaxed) as err:
        merged(doc("tenant", **sections))
    assert err.value.rule == rule and err.value.level == "tenant"
    assert rule in str(err.value) and "tenant" in str(err.value)


@pytest.mark.parametrize(("sections", "rule"), RELAXING)
def test_an_agent_document_that_relaxes_is_rejected(sections: dict[str, Any], rule: str) -> None:
    with pytest.raises(PolicyRelaxed) as err:
        merged(None, doc("agent", **sections))
    assert err.value.rule == rule and err.value.level == "agent"


def test_an_agent_may_not_relax_what_its_tenant_restricted() -> None:
    tenant = doc("tenant", pii={"entities": {"PERSON": "redact"}}, injection={"threshold": 0.3})
    for sections, rule in (
        ({"pii": {"entities": {"PERSON": "pseudonymise"}}}, "pii.entities.PERSON"),
        ({"injection": {"threshold": 0.4}}, "injection.threshold"),
    ):
        with pytest.raises(PolicyRelaxed) as err:
            merged(tenant, doc("agent", **sections))
        assert (err.value.rule, err.value.level) == (rule, "agent")


def test_invalid_documents_are_rejected_at_every_level_with_the_field() -> None:
    with pytest.raises(PolicyError) as err:
        parse_document({**GLOBAL, "pii": {"entities": {"EMAIL_ADDRESS": "shred"}}}, "global")
    assert err.value.level == "global" and err.value.rule == "pii.entities.EMAIL_ADDRESS"
    with pytest.raises(PolicyError) as err:
        parse_document(doc("tenant", injection={"threshhold": 0.1}), "tenant")
    assert err.value.rule == "injection.threshhold"
    with pytest.raises(PolicyError) as err:
        parse_document(doc("tenant"), "agent")
    assert (err.value.rule, err.value.level) == ("level", "agent")
    with pytest.raises(PolicyError) as err:
        parse_document(
            doc("agent", pii={"custom": [{"name": "X", "patterns": ["(unclosed"]}]}), "agent"
        )
    assert err.value.rule.startswith("pii.custom")


def test_the_store_reloads_changes_and_rejects_a_relaxing_file(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    (tmp_path / "global.yaml").write_text(yaml.safe_dump(GLOBAL))
    base = store.get("acme")
    assert base.sources == ["global@3"]
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    (tenants / "acme.yaml").write_text(
        yaml.safe_dump(doc("tenant", pii={"entities": {"PERSON": "redact"}}))
    )
    assert store.get("acme").entities["PERSON"] == "redact"
    (tenants / "acme.yaml").write_text(yaml.safe_dump(doc("tenant", injection={"enabled": False})))
    with pytest.raises(PolicyRelaxed) as err:
        store.get("acme")
    assert (err.value.rule, err.value.level) == ("injection.enabled", "tenant")
    with pytest.raises(PolicyError) as err:
        store.get("acme", "nobody")
    with pytest.raises(PolicyError):
        store.get("../etc")


def test_the_packaged_global_policy_loads(tmp_path: Path) -> None:
    p = PolicyStore(tmp_path).get("acme")
    assert p.pii_enabled and p.injection_enabled and p.secrets_enabled and p.output_pii
    assert p.version.startswith("global@1+")


def test_only_a_policy_that_checks_nothing_on_input_lets_input_through_unasked() -> None:
    from services.guardrails.adapters.policy_files import (
        PACKAGED_GLOBAL,
        PACKAGED_OPEN,
        read_document,
    )
    from services.guardrails.policy import effective, parse_document

    assert effective(read_document(PACKAGED_GLOBAL, "global")).checks_input
    opened = effective(read_document(PACKAGED_OPEN, "global"))
    assert not opened.checks_input and not opened.screens_output
    open_doc = yaml.safe_load(PACKAGED_OPEN.read_text())
    topics = {**open_doc, "topics": {"denied": ["weapons"]}}
    assert effective(parse_document(topics, "global")).checks_input


def test_the_admin_api_fills_in_its_tenant_and_checks_the_documents_around(
    tmp_path: Path,
) -> None:
    """An admin's document names its level, tenant and agent only as itself; a tenant's
    new document must leave each of its agents' documents valid; the write is atomic and
    the store reads the new document at once."""
    store = PolicyStore(tmp_path)
    (tmp_path / "global.yaml").write_text(yaml.safe_dump(GLOBAL))
    filled = fill_document({"version": 1}, "acme", None)
    assert filled == {"version": 1, "level": "tenant", "tenant": "acme"}
    assert fill_document({"version": 1}, "acme", "bot")["agent"] == "bot"
    for data, agent, rule in (
        ({"version": 1, "tenant": "globex"}, None, "tenant"),
        ({"version": 1, "agent": "bot"}, None, "agent"),
        ({"version": 1, "agent": "other"}, "bot", "agent"),
        (["not", "a", "mapping"], None, "document"),
    ):
        with pytest.raises(PolicyError) as caught:
            fill_document(data, "acme", agent)
        assert caught.value.rule == rule
    agent = {"version": 1, "pii": {"entities": {"EMAIL_ADDRESS": "redact"}}}
    store.write("acme", "bot", yaml.safe_dump(fill_document(agent, "acme", "bot")))
    assert store.agents("acme") == ["bot"]
    assert store.get("acme", "bot").input_action("EMAIL_ADDRESS") == "redact"
    tighter = fill_document(
        {"version": 2, "pii": {"entities": {"EMAIL_ADDRESS": "block"}}}, "acme", None
    )
    with pytest.raises(PolicyRelaxed) as caught:
        store.check("acme", None, tighter)  # the agent's `redact` would relax `block`
    assert "agent `bot`" in str(caught.value)
    fine = fill_document({"version": 2, "pii": {"entities": {"URL": "mask"}}}, "acme", None)
    assert store.check("acme", None, fine).input_action("URL") == "mask"
    store.write("acme", None, yaml.safe_dump(fine))
    assert store.get("acme").input_action("URL") == "mask"
    assert not list((tmp_path / "tenants").glob(".put-*"))
    assert store.remove("acme", None) and not store.remove("acme", None)
    assert store.get("acme").input_action("URL") == "allow"
