"""The verdict on one check: which spans get which action, injection, topics, secrets.

Pure orchestration over ports (the PII finder, the injection detector, the embedder, the
anonymizer operators), so it runs the same in the service, the benchmark and the tests.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Protocol, TypeVar

import numpy as np

from libs.events import GuardrailCheck, GuardrailEntity, GuardrailVerdict
from services.guardrails.injection import InjectionDetector, InjectionResult
from services.guardrails.linear import compile_linear
from services.guardrails.policy import CustomRecognizer, EffectivePolicy
from services.guardrails.scheduler import checkpoint
from services.guardrails.secrets import Span, merged, scan
from services.guardrails.structured import NotJson, rewrite_json

PLACEHOLDER = compile_linear(r"<[A-Z][A-Z0-9_]*(?:_\d+|#[0-9a-f]+)?>")
T = TypeVar("T")
# How many input messages' findings a replica remembers (MessageMemo); a service's replica
# takes ENCLAVE_GUARD_MEMO_SIZE (libs/settings.py, the same default).
MEMO_SIZE = 4096


class PiiFinder(Protocol):
    def find(
        self, text: str, entities: list[str], custom: list[CustomRecognizer], min_score: float
    ) -> list[Span]: ...


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length rows, one per text."""
        ...


class Operators(Protocol):
    def mask(self, value: str) -> str: ...

    def hashed(self, value: str, entity: str, tenant: str) -> str: ...


class Pseudonyms:
    """Stable placeholders for one request: the same value gets the same <TYPE_n>."""

    def __init__(self, known: dict[str, str]) -> None:
        self.by_placeholder = dict(known)
        self.by_value = {(p.rsplit("_", 1)[0][1:], v): p for p, v in known.items()}

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self.by_value:
            n = 1 + sum(1 for t, _ in self.by_value if t == entity)
            p = f"<{entity}_{n}>"
            self.by_value[key] = p
            self.by_placeholder[p] = value
        return self.by_value[key]


def beside_secrets(spans: Sequence[Span], secrets: Sequence[Span]) -> tuple[list[Span], list[Span]]:
    """The PII spans and the secrets, with a secret winning where they overlap: a token a
    pattern knows for a secret is that secret, whatever a name model calls it ("ghp_..."
    or "jwt eyJ..." taken for a person would be pseudonymised, and so restored in the
    answer, instead of redacted). A PII span that reaches beyond the secret widens it, so
    that no part of either goes out."""
    grown = list(secrets)
    kept: list[Span] = []
    for s in spans:
        hit = [i for i, x in enumerate(grown) if s.start < x.end and x.start < s.end]
        if not hit:
            kept.append(s)
            continue
        for i in hit:
            x = grown[i]
            grown[i] = Span(x.type, min(x.start, s.start), max(x.end, s.end), x.score)
    return kept, merged(grown)  # widened secrets that now overlap become one


class MessageMemo:
    """What the last `size` input messages were found to hold (their PII spans, their
    injection score), by a digest of the text and of what was looked for. A chat sends its
    whole history with every turn: each earlier message was screened when it was new, so
    a turn costs the screening of its new message only. The findings depend on nothing
    else (the models are fixed for the process); the text itself is never kept. Keys hold
    the tenant, so no tenant can time a check to learn what another one sent. Safe across
    the scheduler's threads."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self._found: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, find: Callable[[], T]) -> T:
        with self._lock:
            if key in self._found:
                self._found.move_to_end(key)
                return self._found[key]  # type: ignore[return-value]
        found = find()
        with self._lock:
            self._found[key] = found
            if len(self._found) > self.size:
                self._found.popitem(last=False)
        return found


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Screener:
    def __init__(
        self,
        pii: PiiFinder,
        injection: InjectionDetector,
        operators: Operators,
        embedder: Embedder | None = None,
        memo: MessageMemo | None = None,
    ) -> None:
        self.pii = pii
        self.injection = injection
        self.operators = operators
        self.embedder = embedder
        self.memo = memo or MessageMemo()
        self._topic_vectors: dict[str, np.ndarray] = {}

    # -- pieces --

    def _replacement(
        self, action: str, entity: str, value: str, tenant: str, names: Pseudonyms
    ) -> str:
        if action == "allow":
            return value
        if action == "mask":
            return self.operators.mask(value)
        if action == "hash":
            return self.operators.hashed(value, entity, tenant)
        if action == "pseudonymise":
            return names.placeholder(entity, value)
        return f"<{entity}>"

    def _rewrite(
        self,
        text: str,
        found: list[tuple[Span, str]],
        tenant: str,
        names: Pseudonyms,
        message: int = 0,
    ) -> tuple[str, list[GuardrailEntity]]:
        """The text with each span replaced as its action says, and the entities found.
        Of overlapping spans the one that starts first (the longer, on a tie) wins."""
        entities: list[GuardrailEntity] = []
        out: list[str] = []
        pos = 0
        for s, action in sorted(found, key=lambda f: (f[0].start, -(f[0].end - f[0].start))):
            if s.start < pos:
                continue
            repl = self._replacement(action, s.type, text[s.start : s.end], tenant, names)
            entities.append(
                GuardrailEntity(
                    type=s.type,
                    start=s.start,
                    end=s.end,
                    score=round(s.score, 4),
                    message=message,
                    action=action,
                    replacement="" if action == "allow" else repl,
                )
            )
            out.append(text[pos : s.start] + repl)
            pos = s.end
        out.append(text[pos:])
        return "".join(out), entities

    def _pii_spans(
        self,
        text: str,
        policy: EffectivePolicy,
        entities: list[str] | None = None,
        seen_as: tuple[str, bytes] | None = None,
    ) -> list[Span]:
        """The PII in `text`, of `entities` (the policy's input entities unless named);
        with `seen_as` (its tenant, the text's digest), an input message whose findings
        the memo keeps."""
        if not policy.pii_enabled:
            return []
        wanted = list(policy.entities) if entities is None else entities
        custom = list(policy.custom.values())

        def find() -> tuple[Span, ...]:
            return tuple(self.pii.find(text, wanted, custom, policy.min_score))

        if seen_as is not None:
            key = (
                "pii",
                *seen_as,
                tuple(wanted),
                policy.min_score,
                tuple(c.model_dump_json() for c in custom),
            )
            spans: Sequence[Span] = self.memo.get(key, find)
        else:
            spans = find()
        # Placeholders from earlier turns are not PII.
        marks = [m.span() for m in PLACEHOLDER.finditer(text)]
        return [s for s in spans if not any(a < s.end and s.start < b for a, b in marks)]

    @staticmethod
    def _secret_spans(text: str, policy: EffectivePolicy) -> list[Span]:
        return scan(text, policy.min_entropy) if policy.secrets_enabled else []

    def _topic(self, text: str, policy: EffectivePolicy) -> tuple[str, str] | None:
        """(rule, reason) when the text is off-topic or on a denied topic."""
        if self.embedder is None or not (policy.topics_denied or policy.topics_allowed):
            return None
        names = [*policy.topics_denied, *(policy.topics_allowed or [])]
        missing = [t for t in names if t not in self._topic_vectors]
        if missing:
            for t, vec in zip(missing, self.embedder.embed(missing), strict=True):
                self._topic_vectors[t] = vec
        query = self.embedder.embed([text])[0]
        for t in policy.topics_denied:
            sim = float(query @ self._topic_vectors[t])
            if sim >= policy.deny_threshold:
                return "topics.denied", f"topic: denied topic '{t}' (similarity {sim:.2f})"
        if policy.topics_allowed:
            best = max(float(query @ self._topic_vectors[t]) for t in policy.topics_allowed)
            if best < policy.allow_threshold:
                return "topics.allowed", f"topic: off the allowed topics (best {best:.2f})"
        return None

    # -- the check --

    def check(self, check: GuardrailCheck, policy: EffectivePolicy) -> GuardrailVerdict:
        if check.direction == "output":
            return self._output(check, policy)
        tenant = check.ctx.tenant
        names = Pseudonyms(check.pseudonyms)
        texts: list[str] = []
        entities: list[GuardrailEntity] = []
        scores: list[float] = []
        reasons: list[str] = []
        rule: str | None = None
        # A chat's input stops at its first block: no model sees any of it, so the later
        # messages, and the PII of one blocked as an injection, are not looked at (a long
        # jailbreak spends ten times its classifier's time in spaCy and Rampart). The HTTP
        # check asks for the full report. Such a verdict holds the texts screened before.
        stops = check.direction == "input" and not check.report
        for i, msg in enumerate(check.messages):
            if stops and rule is not None:
                break
            text = msg.content or ""
            checkpoint()
            seen_as = (tenant, _digest(text))  # the memo's key for this message
            screened = (check.direction == "context" and policy.screen_context) or (
                check.direction == "input"
                and (
                    (msg.role == "user" and policy.injection_enabled)
                    or (msg.role == "tool" and policy.screen_context)
                )
            )
            score = 0.0
            if screened:
                result: InjectionResult = self.memo.get(
                    ("injection", *seen_as), partial(self.injection.score, text)
                )
                score = result.score
                if score >= policy.injection_threshold:
                    kind = (
                        "indirect injection"
                        if msg.role == "tool" or (check.direction == "context")
                        else "prompt injection"
                    )
                    reasons.extend(f"{kind}: {r}" for r in result.reasons or ["score"])
                    if rule is None and check.direction == "input":
                        rule = "injection.threshold"
            scores.append(score)
            if stops and rule is not None:
                break
            # Secrets never reach a model either: in user text, documents and tool results.
            spans, secrets = beside_secrets(
                self._pii_spans(text, policy, seen_as=seen_as), self._secret_spans(text, policy)
            )
            found = [(s, policy.input_action(s.type)) for s in spans]
            found += [(s, policy.secrets_action) for s in secrets]
            rewritten, seen = self._rewrite(text, found, tenant, names, message=i)
            for e in seen:
                if e.action == "block" and rule is None:
                    secret = any((s.start, s.type) == (e.start, e.type) for s in secrets)
                    rule = "secrets.action" if secret else f"pii.entities.{e.type}"
                    kind = "secrets" if secret else "pii"
                    reasons.append(f"{kind}: {e.type} is blocked by policy")
            entities += seen
            texts.append(rewritten)
        if check.direction == "context" and any(s >= policy.injection_threshold for s in scores):
            rule = rule or "injection.screen_context"
        last_user = next(
            (m.content for m in reversed(check.messages) if m.role == "user" and m.content), None
        )
        if rule is None and check.direction == "input" and last_user:
            topic = self._topic(last_user, policy)
            if topic is not None:
                rule = topic[0]
                reasons.append(topic[1])
        return GuardrailVerdict(
            allowed=rule is None,
            texts=texts,
            entities=entities,
            injection_score=max(scores, default=0.0),
            scores=scores,
            reasons=reasons,
            rule=rule,
            pseudonyms=names.by_placeholder,
            # Pseudonyms are restored to the user by the output window: it must run then.
            screen_output=policy.screens_output or bool(names.by_placeholder),
            flagged=[i for i, sc in enumerate(scores) if sc >= policy.injection_threshold]
            if check.direction == "context"
            else [],
        )

    def _output_spans(
        self, text: str, policy: EffectivePolicy, tenant: str
    ) -> tuple[str, list[GuardrailEntity]]:
        found: list[tuple[Span, str]] = []
        spans: list[Span] = []
        if policy.output_pii:
            # Only what output screening acts on is looked for: PERSON, allowed on output by
            # the packaged policy, costs a pass of the name model for nothing.
            acted_on = [e for e in policy.entities if policy.output_action(e) != "allow"]
            spans = self._pii_spans(text, policy, acted_on)
        spans, secrets = beside_secrets(spans, self._secret_spans(text, policy))
        found += [(s, policy.secrets_action) for s in secrets]
        if policy.output_pii:
            for s in spans:
                action = policy.output_action(s.type)
                if action != "allow":
                    # The user cannot be handed back a value the model made up.
                    found.append((s, "redact" if action == "pseudonymise" else action))
        return self._rewrite(text, found, tenant, Pseudonyms({}))

    def _output(self, check: GuardrailCheck, policy: EffectivePolicy) -> GuardrailVerdict:
        text = check.messages[0].content or "" if check.messages else ""
        tenant = check.ctx.tenant
        reasons: list[str] = []
        rule: str | None = None
        if check.structure == "json":
            try:
                rewritten, entities = rewrite_json(
                    text, lambda value: self._output_spans(value, policy, tenant)
                )
            except NotJson as exc:
                return GuardrailVerdict(
                    allowed=False, texts=[text], reasons=[str(exc)], rule="output.structure"
                )
        else:
            rewritten, entities = self._output_spans(text, policy, tenant)
        for e in entities:
            if e.action == "block":
                secret = e.type not in policy.output_entities
                rule = "secrets.action" if secret else f"output.entities.{e.type}"
                reasons.append(f"output: {e.type} is blocked by policy")
                break
        for p in policy.denied_patterns:
            if compile_linear(p, ignore_case=True).search(text):
                rule = rule or "output.denied_patterns"
                reasons.append(f"content: matches a denied pattern {p!r}")
                break
        return GuardrailVerdict(
            allowed=rule is None,
            texts=[rewritten],
            entities=entities,
            reasons=reasons,
            rule=rule,
        )
