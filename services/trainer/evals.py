"""The eval harness and the eval gate. No I/O: answers come in, reports and decisions go out.

A tenant's eval set is a list of items, each a prompt (chat messages) in a task, with
checks on the answer:

    {"name": "support", "items": [
      {"id": "refund-1", "task": "refunds",
       "messages": [{"role": "user", "content": "How long do refunds take?"}],
       "checks": [{"type": "contains", "value": "14 days", "ignore_case": true},
                  {"type": "regex", "value": "\\\\bdays?\\\\b"},
                  {"type": "exact", "value": "Refunds take 14 days."}]}]}

An item passes when every one of its checks passes. A report gives the pass rate per
task and overall; `deltas` compares a candidate's report with the serving version's on
the same eval set (same digest); `gate` promotes the candidate only if no task's pass
rate went down (and the overall rate did not either).

A `rubric` check is judged by a model the tenant chooses (the set's `judge_model`, or
the one a run names): `rubric_requests` gives the judge's prompts (the rubric, the
question, the answer; "answer PASS or FAIL"), `parse_verdict` reads what the judge said,
and `score` takes those verdicts by `verdict_key(item id, check index)`. A rubric check
without a verdict, or with a verdict that says neither PASS nor FAIL, fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator


class Check(BaseModel):
    type: Literal["exact", "contains", "regex", "rubric"]
    value: str
    ignore_case: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> Check:
        if self.type == "regex":
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"regex {self.value!r} does not compile: {exc}") from exc
        return self

    def passes(self, answer: str) -> bool:
        """exact / contains / regex; a rubric check is judged by a model (`score`)."""
        if self.type == "rubric":
            raise ValueError("a rubric check is judged by a model, not matched")
        text, value = answer.strip(), self.value
        if self.type == "regex":
            return re.search(value, text, re.IGNORECASE if self.ignore_case else 0) is not None
        if self.ignore_case:
            text, value = text.casefold(), value.casefold()
        if self.type == "exact":
            return text == value.strip()
        return value in text


class EvalMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class EvalItem(BaseModel):
    id: str
    task: str = "default"
    messages: list[EvalMessage] = Field(min_length=1)
    checks: list[Check] = Field(min_length=1)


class EvalSet(BaseModel):
    name: str = "eval"
    items: list[EvalItem] = Field(min_length=1)
    # Judges the `rubric` checks: a base model or one of the tenant's adapters (its own).
    judge_model: str | None = None

    @field_validator("items")
    @classmethod
    def _unique_ids(cls, items: list[EvalItem]) -> list[EvalItem]:
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"item id {item.id!r} appears twice")
            seen.add(item.id)
        return items

    def digest(self) -> str:
        """Which eval set a report was made on: reports compare only on the same digest."""
        body = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


class ItemResult(BaseModel):
    id: str
    task: str
    passed: bool
    answer: str
    failed_checks: list[str] = Field(default_factory=list)


class TaskScore(BaseModel):
    passed: int
    total: int

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


class EvalReport(BaseModel):
    eval_set: str  # the eval set's digest
    name: str
    model: str  # what answered: a base model id or an adapter's public id / digest
    results: list[ItemResult]
    tasks: dict[str, TaskScore]

    @property
    def pass_rate(self) -> float:
        total = sum(t.total for t in self.tasks.values())
        return sum(t.passed for t in self.tasks.values()) / total if total else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "eval_set": self.eval_set,
            "model": self.model,
            "pass_rate": round(self.pass_rate, 4),
            "tasks": {k: round(v.pass_rate, 4) for k, v in sorted(self.tasks.items())},
        }


JUDGE_SYSTEM = (
    "You grade an assistant's answer against a rubric. Reply with one word: "
    "PASS if the answer meets the rubric, FAIL if it does not."
)


def verdict_key(item_id: str, index: int) -> str:
    return f"{item_id}#{index}"


def judge_prompt(item: EvalItem, rubric: str, answer: str) -> list[dict[str, str]]:
    question = "\n".join(f"{m.role}: {m.content}" for m in item.messages)
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": f"Rubric: {rubric}\n\nConversation:\n{question}\n\n"
            f"Answer to grade:\n{answer}\n\nPASS or FAIL?",
        },
    ]


def rubric_requests(
    eval_set: EvalSet, answers: Mapping[str, str]
) -> list[tuple[str, list[dict[str, str]]]]:
    """(verdict key, judge prompt) for every rubric check of an item that was answered."""
    out: list[tuple[str, list[dict[str, str]]]] = []
    for item in eval_set.items:
        answer = answers.get(item.id)
        if answer is None:
            continue
        for i, check in enumerate(item.checks):
            if check.type == "rubric":
                out.append((verdict_key(item.id, i), judge_prompt(item, check.value, answer)))
    return out


_VERDICT = re.compile(r"\b(PASS|FAIL)(?:ED|ES)?\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """The judge's verdict: its first PASS or FAIL word (True / False); None if neither."""
    m = _VERDICT.search(text)
    if m is None:
        return None
    return m.group(1).upper() == "PASS"


def _failed(item: EvalItem, answer: str, verdicts: Mapping[str, bool | None] | None) -> list[str]:
    failed: list[str] = []
    for i, check in enumerate(item.checks):
        if check.type != "rubric":
            if not check.passes(answer):
                failed.append(f"{check.type}:{check.value}")
            continue
        key = verdict_key(item.id, i)
        if verdicts is None or key not in verdicts:
            failed.append(f"rubric:{check.value} (no judge)")
        elif verdicts[key] is None:
            failed.append(f"rubric:{check.value} (the judge said neither PASS nor FAIL)")
        elif not verdicts[key]:
            failed.append(f"rubric:{check.value}")
    return failed


def score(
    eval_set: EvalSet,
    answers: Mapping[str, str],
    model: str,
    verdicts: Mapping[str, bool | None] | None = None,
) -> EvalReport:
    """The report of `answers` (by item id) and the judge's `verdicts` on rubric checks
    (by `verdict_key`); a missing answer fails its item."""
    results: list[ItemResult] = []
    tasks: dict[str, TaskScore] = {}
    for item in eval_set.items:
        answer = answers.get(item.id)
        failed = _failed(item, answer, verdicts) if answer is not None else ["no answer"]
        results.append(
            ItemResult(
                id=item.id,
                task=item.task,
                passed=not failed,
                answer=answer or "",
                failed_checks=failed,
            )
        )
        t = tasks.setdefault(item.task, TaskScore(passed=0, total=0))
        t.total += 1
        t.passed += int(not failed)
    return EvalReport(
        eval_set=eval_set.digest(), name=eval_set.name, model=model, results=results, tasks=tasks
    )


class NotComparable(ValueError):
    pass


def deltas(candidate: EvalReport, serving: EvalReport) -> dict[str, float]:
    """Pass-rate change per task (and `_overall`), candidate minus serving."""
    if candidate.eval_set != serving.eval_set:
        raise NotComparable("the two reports were made on different eval sets")
    out = {
        task: round(candidate.tasks[task].pass_rate - serving.tasks[task].pass_rate, 6)
        for task in sorted(set(candidate.tasks) & set(serving.tasks))
    }
    out["_overall"] = round(candidate.pass_rate - serving.pass_rate, 6)
    return out


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    deltas: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons, "deltas": self.deltas}


def gate(candidate: EvalReport, serving: EvalReport) -> GateDecision:
    """Promote only if nothing regressed against what serves now."""
    try:
        d = deltas(candidate, serving)
    except NotComparable as exc:
        return GateDecision(False, [f"not promoted: {exc}"])
    if set(candidate.tasks) != set(serving.tasks):
        return GateDecision(False, ["not promoted: the reports cover different tasks"], d)
    reasons = [
        f"task {task!r} regressed: pass rate {serving.tasks[task].pass_rate:.2f} -> "
        f"{candidate.tasks[task].pass_rate:.2f}"
        for task, delta in d.items()
        if task != "_overall" and delta < 0
    ]
    if d["_overall"] < 0:
        reasons.append(
            f"overall pass rate regressed: {serving.pass_rate:.2f} -> {candidate.pass_rate:.2f}"
        )
    if reasons:
        return GateDecision(False, reasons, d)
    return GateDecision(
        True,
        [
            f"no regression against {serving.model}: overall pass rate "
            f"{serving.pass_rate:.2f} -> {candidate.pass_rate:.2f}"
        ],
        d,
    )
