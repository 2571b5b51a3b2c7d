"""Guardrail policies: YAML documents at three levels, merged global -> tenant -> agent.

A lower level may only restrict. Each document is checked against the policy merged from
the levels above it; a document that relaxes anything (a weaker action for an entity, a
higher threshold, a detector switched off, a topic allowed that a level above does not
allow) is rejected as a whole with a `PolicyRelaxed` naming the rule and the level.
Pure: no I/O; adapters/policy_files.py reads the documents.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.guardrails.linear import UnsupportedPattern, compile_linear

Action = Literal["allow", "mask", "hash", "pseudonymise", "redact", "block"]
Level = Literal["global", "tenant", "agent"]

# How much each action hides. A lower level may pick an action of equal or higher rank:
# mask shows part of the value, hash and pseudonymise hide it behind a stable token,
# redact drops it, block refuses the message.
RANK: dict[str, int] = {
    "allow": 0,
    "mask": 1,
    "hash": 2,
    "pseudonymise": 2,
    "redact": 3,
    "block": 4,
}


class PolicyError(ValueError):
    """A policy document that cannot be used; `rule` and `level` say where."""

    def __init__(self, rule: str, level: str, message: str) -> None:
        super().__init__(f"{level} policy, rule `{rule}`: {message}")
        self.rule = rule
        self.level = level


class PolicyRelaxed(PolicyError):
    """A lower level tried to relax what a level above decided."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomRecognizer(_Section):
    """A tenant's own entity: regular expressions, raised by context words nearby."""

    name: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    patterns: list[str] = Field(min_length=1)
    context: list[str] = Field(default_factory=list)
    score: float = Field(default=0.6, ge=0.0, le=1.0)
    action: Action = "redact"

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                compile_linear(p)
            except UnsupportedPattern as exc:
                raise ValueError(str(exc)) from None
        return v


class PiiSection(_Section):
    enabled: bool | None = None
    min_score: float | None = Field(default=None, ge=0.0, le=1.0)
    entities: dict[str, Action] = Field(default_factory=dict)
    custom: list[CustomRecognizer] = Field(default_factory=list)


class InjectionSection(_Section):
    enabled: bool | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Screen RAG chunks and tool results (indirect injection).
    screen_context: bool | None = None


class TopicsSection(_Section):
    # None: every topic not denied is allowed.
    allowed: list[str] | None = None
    denied: list[str] = Field(default_factory=list)
    # Similarity to a denied topic at or above which a request is refused.
    deny_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Similarity to some allowed topic below which a request is off-topic.
    allow_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class SecretsSection(_Section):
    enabled: bool | None = None
    action: Literal["redact", "block"] | None = None
    # Shannon entropy (bits per character) from which a long token counts as a secret.
    min_entropy: float | None = Field(default=None, ge=0.0, le=8.0)


class OutputSection(_Section):
    pii_recheck: bool | None = None
    entities: dict[str, Action] = Field(default_factory=dict)
    # Content policy: regular expressions the output may not match (case-insensitive).
    denied_patterns: list[str] = Field(default_factory=list)


class PolicyDocument(_Section):
    """One YAML document as written by an admin."""

    version: str
    level: Level
    tenant: str | None = None
    agent: str | None = None
    pii: PiiSection = Field(default_factory=PiiSection)
    injection: InjectionSection = Field(default_factory=InjectionSection)
    topics: TopicsSection = Field(default_factory=TopicsSection)
    secrets: SecretsSection = Field(default_factory=SecretsSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @field_validator("version", mode="before")
    @classmethod
    def _str_version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v


class EffectivePolicy(BaseModel):
    """The merged policy one request runs under. The permissive defaults are the baseline."""

    pii_enabled: bool = False
    min_score: float = 1.0
    entities: dict[str, str] = Field(default_factory=dict)
    custom: dict[str, CustomRecognizer] = Field(default_factory=dict)
    injection_enabled: bool = False
    injection_threshold: float = 1.0
    screen_context: bool = False
    topics_allowed: list[str] | None = None
    topics_denied: list[str] = Field(default_factory=list)
    deny_threshold: float = 1.0
    allow_threshold: float = 0.0
    secrets_enabled: bool = False
    secrets_action: str = "redact"
    min_entropy: float = 8.0
    output_pii: bool = False
    output_entities: dict[str, str] = Field(default_factory=dict)
    denied_patterns: list[str] = Field(default_factory=list)
    # "global@3", "tenant:acme@7", "agent:acme/support@1"
    sources: list[str] = Field(default_factory=list)

    @property
    def checks_input(self) -> bool:
        """Whether anything in the input is checked: if not, input verdicts are constant."""
        return (
            self.pii_enabled
            or self.secrets_enabled
            or self.injection_enabled
            or self.screen_context
            or bool(self.topics_denied or self.topics_allowed)
        )

    @property
    def screens_output(self) -> bool:
        """Whether anything in the output is checked: if not, tokens may pass unwindowed."""
        return self.secrets_enabled or self.output_pii or bool(self.denied_patterns)

    @property
    def version(self) -> str:
        """Names every document merged, plus a digest of the result."""
        digest = hashlib.sha256(self.model_dump_json(exclude={"sources"}).encode()).hexdigest()
        return "+".join([*self.sources, digest[:8]])

    def input_action(self, entity: str) -> str:
        return self.entities.get(entity, "allow")

    def output_action(self, entity: str) -> str:
        return self.output_entities.get(entity, "allow")


def parse_document(data: Any, level: str) -> PolicyDocument:
    """Validate one YAML document's data; errors name the rule (the field) and the level."""
    if not isinstance(data, dict):
        raise PolicyError("document", level, "a policy document must be a mapping")
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        rule = ".".join(str(p) for p in err["loc"]) or "document"
        raise PolicyError(rule, level, err["msg"]) from None
    if doc.level != level:
        raise PolicyError("level", level, f"the document says level `{doc.level}`")
    return doc


def _restrict_bool(rule: str, level: str, above: bool, new: bool | None) -> bool:
    if new is None:
        return above
    if above and not new:
        raise PolicyRelaxed(rule, level, "a level above turns this detector on; it stays on")
    return new


def _restrict_action(rule: str, level: str, above: str, new: str | None) -> str:
    if new is None:
        return above
    if RANK[new] < RANK[above]:
        raise PolicyRelaxed(rule, level, f"`{new}` is weaker than `{above}` set above")
    return new


def _restrict_max(rule: str, level: str, above: float, new: float | None) -> float:
    """A value that only restricts as it goes down (thresholds, min scores)."""
    if new is None:
        return above
    if new > above:
        raise PolicyRelaxed(rule, level, f"{new} is above {above} set above; it may only go down")
    return new


def _restrict_min(rule: str, level: str, above: float, new: float | None) -> float:
    if new is None:
        return above
    if new < above:
        raise PolicyRelaxed(rule, level, f"{new} is below {above} set above; it may only go up")
    return new


def merge(above: EffectivePolicy, doc: PolicyDocument) -> EffectivePolicy:
    """The policy `above` restricted by `doc`; raises PolicyRelaxed if `doc` relaxes it."""
    lvl = doc.level
    # The global document sets the baseline freely; the defaults are not a level.
    if lvl == "global":
        above = EffectivePolicy(
            min_score=1.0, injection_threshold=1.0, deny_threshold=1.0, min_entropy=8.0
        )
    out = above.model_copy(deep=True)
    strict = lvl != "global"

    def b(rule: str, old: bool, new: bool | None) -> bool:
        return _restrict_bool(rule, lvl, old, new) if strict else (old if new is None else new)

    def a(rule: str, old: str, new: str | None) -> str:
        return _restrict_action(rule, lvl, old, new) if strict else (new or old)

    def down(rule: str, old: float, new: float | None) -> float:
        return _restrict_max(rule, lvl, old, new) if strict else (old if new is None else new)

    def up(rule: str, old: float, new: float | None) -> float:
        return _restrict_min(rule, lvl, old, new) if strict else (old if new is None else new)

    pii = doc.pii
    out.pii_enabled = b("pii.enabled", above.pii_enabled, pii.enabled)
    out.min_score = down("pii.min_score", above.min_score, pii.min_score)
    for entity, action in pii.entities.items():
        out.entities[entity] = a(f"pii.entities.{entity}", above.input_action(entity), action)
    for rec in pii.custom:
        rule = f"pii.custom.{rec.name}"
        old = above.custom.get(rec.name)
        if old is not None and strict:
            if (rec.patterns, rec.context) != (old.patterns, old.context):
                raise PolicyRelaxed(rule, lvl, "a recognizer defined above cannot be redefined")
            _restrict_max(f"{rule}.score", lvl, old.score, rec.score)
            _restrict_action(f"{rule}.action", lvl, old.action, rec.action)
        out.custom[rec.name] = rec
        out.entities[rec.name] = a(rule, above.input_action(rec.name), rec.action)

    inj = doc.injection
    out.injection_enabled = b("injection.enabled", above.injection_enabled, inj.enabled)
    out.injection_threshold = down("injection.threshold", above.injection_threshold, inj.threshold)
    out.screen_context = b("injection.screen_context", above.screen_context, inj.screen_context)

    top = doc.topics
    if top.allowed is not None:
        if strict and above.topics_allowed is not None:
            extra = [t for t in top.allowed if t not in above.topics_allowed]
            if extra:
                raise PolicyRelaxed(
                    "topics.allowed", lvl, f"{extra} are not among the topics allowed above"
                )
        out.topics_allowed = list(top.allowed)
    out.topics_denied = above.topics_denied + [
        t for t in top.denied if t not in above.topics_denied
    ]
    out.deny_threshold = down("topics.deny_threshold", above.deny_threshold, top.deny_threshold)
    out.allow_threshold = up("topics.allow_threshold", above.allow_threshold, top.allow_threshold)

    sec = doc.secrets
    out.secrets_enabled = b("secrets.enabled", above.secrets_enabled, sec.enabled)
    out.secrets_action = a("secrets.action", above.secrets_action, sec.action)
    out.min_entropy = down("secrets.min_entropy", above.min_entropy, sec.min_entropy)

    o = doc.output
    out.output_pii = b("output.pii_recheck", above.output_pii, o.pii_recheck)
    for entity, action in o.entities.items():
        out.output_entities[entity] = a(
            f"output.entities.{entity}", above.output_action(entity), action
        )
    for p in o.denied_patterns:
        try:
            compile_linear(p, ignore_case=True)
        except UnsupportedPattern as exc:
            raise PolicyError("output.denied_patterns", lvl, str(exc)) from None
        if p not in out.denied_patterns:
            out.denied_patterns.append(p)

    name = {
        "global": "global",
        "tenant": f"tenant:{doc.tenant}",
        "agent": f"agent:{doc.tenant}/{doc.agent}",
    }
    out.sources = (
        [*above.sources, f"{name[lvl]}@{doc.version}"] if strict else [f"global@{doc.version}"]
    )
    return out


def effective(
    global_doc: PolicyDocument,
    tenant_doc: PolicyDocument | None = None,
    agent_doc: PolicyDocument | None = None,
) -> EffectivePolicy:
    """Merge the three levels top-down; each lower one may only restrict."""
    policy = merge(EffectivePolicy(), global_doc)
    for doc in (tenant_doc, agent_doc):
        if doc is not None:
            policy = merge(policy, doc)
    return policy


def fill_document(data: Any, tenant: str, agent: str | None) -> dict[str, Any]:
    """A document sent through the admin API for `tenant` (or its `agent`), with `level`,
    `tenant` and `agent` filled in where absent; where present they must name this tenant
    and agent (a tenant's admin writes its own documents only)."""
    level = "tenant" if agent is None else "agent"
    if not isinstance(data, dict):
        raise PolicyError("document", level, "a policy document must be a mapping")
    filled = {"level": level, "tenant": tenant, **({"agent": agent} if agent else {}), **data}
    if filled["tenant"] != tenant:
        raise PolicyError("tenant", level, f"the document is for tenant `{filled['tenant']}`")
    if agent is not None and filled.get("agent") != agent:
        raise PolicyError("agent", level, f"the document is for agent `{filled.get('agent')}`")
    if agent is None and filled.get("agent") is not None:
        raise PolicyError("agent", level, "a tenant's document names no agent")
    return filled


def admin_document(data: Any, tenant: str, agent: str | None) -> PolicyDocument:
    """`fill_document`, then the parser's own checks."""
    return parse_document(
        fill_document(data, tenant, agent), "tenant" if agent is None else "agent"
    )
