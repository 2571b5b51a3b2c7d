"""Training files: chat-format JSONL, validated line by line. No I/O.

Each non-empty line is one example in OpenAI's chat fine-tuning format:

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "weight": 1}]}

Roles are system, user and assistant; every content is a string; an example has at
least one user message and at least one assistant message with `weight` 1 (the default):
what the model learns. Errors name the line (1-based) and the field, so that a user can
fix the file; validation reports up to `MAX_ERRORS` of them.

It lives in libs because two services check the same format: the memory service when a
file is uploaded with purpose `fine-tune` (a bad file is refused there, its lines named),
and the trainer again when a job runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
MAX_ERRORS = 20
MAX_LINE_BYTES = 65_536


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: int = 1  # assistant messages only: 0 = context, not learned


@dataclass(frozen=True)
class Example:
    line: int
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class LineError:
    line: int
    message: str
    param: str = ""

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class TrainingFileError(ValueError):
    def __init__(self, errors: list[LineError], truncated: bool = False) -> None:
        self.errors = errors
        self.truncated = truncated
        more = " (and more)" if truncated else ""
        super().__init__("; ".join(str(e) for e in errors[:5]) + more)


def _example(line_no: int, obj: object) -> tuple[Example | None, list[LineError]]:
    errs: list[LineError] = []

    def err(msg: str, param: str = "messages") -> tuple[None, list[LineError]]:
        errs.append(LineError(line_no, msg, param))
        return None, errs

    if not isinstance(obj, dict):
        return err("an example must be a JSON object with `messages`", "")
    raw = obj.get("messages")
    if not isinstance(raw, list) or not raw:
        return err("`messages` must be a non-empty list")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return err(f"{where} must be an object with `role` and `content`", where)
        role = m.get("role")
        if role not in ROLES:
            return err(f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", where)
        content = m.get("content")
        if not isinstance(content, str):
            return err(f"{where}.content must be a string", where)
        weight = m.get("weight", 1)
        if role != "assistant" and "weight" in m:
            return err(f"{where}.weight is only allowed on assistant messages", where)
        if weight not in (0, 1) or isinstance(weight, bool):
            return err(f"{where}.weight must be 0 or 1", where)
        unknown = set(m) - {"role", "content", "weight", "name"}
        if unknown:
            return err(f"{where} has unknown fields {sorted(unknown)}", where)
        messages.append(Message(role, content, weight))
    if not any(m.role == "user" for m in messages):
        return err("an example needs at least one user message")
    learned = [m for m in messages if m.role == "assistant" and m.weight == 1]
    if not learned:
        return err("an example needs at least one assistant message with weight 1")
    if any(not m.content.strip() for m in learned):
        return err("an assistant message to learn from has empty content")
    return Example(line_no, tuple(messages)), errs


def parse_training_file(data: bytes | str, *, min_examples: int = 1) -> list[Example]:
    """The examples of a chat-format JSONL file; TrainingFileError names each bad line."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrainingFileError(
                [LineError(0, f"the file is not UTF-8 ({exc.reason})")]
            ) from exc
    else:
        text = data
    examples: list[Example] = []
    errors: list[LineError] = []
    truncated = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(errors) >= MAX_ERRORS:
            truncated = True
            break
        if len(line.encode()) > MAX_LINE_BYTES:
            errors.append(LineError(line_no, f"longer than {MAX_LINE_BYTES} bytes", ""))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(LineError(line_no, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        example, errs = _example(line_no, obj)
        errors.extend(errs)
        if example is not None:
            examples.append(example)
    if errors:
        raise TrainingFileError(errors, truncated)
    if len(examples) < min_examples:
        raise TrainingFileError(
            [LineError(0, f"the file has {len(examples)} examples; at least {min_examples} needed")]
        )
    return examples


def split_held_out(
    examples: list[Example], fraction: float = 0.2
) -> tuple[list[Example], list[Example]]:
    """Deterministic split when no validation file is given: every k-th example held out."""
    if len(examples) < 2:
        return examples, []
    k = max(2, round(1 / fraction))
    held = [e for i, e in enumerate(examples) if i % k == k - 1]
    return [e for i, e in enumerate(examples) if i % k != k - 1], held
