"""Query rewriting (services/memory/rewrite.py, pure): the prompt and the parser's checks
on what the model answers; and the service's choice of when to ask the model."""

from __future__ import annotations

from typing import Any

from libs.context import RequestContext
from libs.events import ChatMessage, RagOptions, RetrieveRequest
from services.memory import rewrite
from services.memory.handlers import MemoryService

HISTORY = [
    ("user", "What type of government does Czechia have?"),
    ("assistant", "parliamentary republic."),
]
FOLLOWUP = "What religions do people follow there?"


def test_prompt_ends_with_the_conversation_and_the_question_after_the_examples() -> None:
    msgs = rewrite.messages_for("  And what is\nits capital? ", HISTORY)
    assert msgs[0] == {"role": "system", "content": rewrite.PROMPT}
    # The examples are earlier exchanges: user asks, assistant answers with the rewrite.
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * len(rewrite.EXAMPLES)
    assert msgs[2]["content"] == rewrite.EXAMPLES[0][2]
    last = msgs[-1]
    assert last["role"] == "user"
    assert last["content"] == (
        "Conversation: user: What type of government does Czechia have? "
        "assistant: parliamentary republic.\nLast question: And what is its capital?"
    )


def test_prompt_keeps_only_the_last_turns_cut_short() -> None:
    long = [("user", f"turn {i} " + "x" * 1000) for i in range(10)] + [("system", "no")]
    content = rewrite.messages_for("q?", long)[-1]["content"]
    assert "turn 5" not in content and "turn 6" in content and "turn 9" in content
    assert "system" not in content and len(content) < 5 * rewrite.TURN_CHARS
    assert "Conversation: (none)" in rewrite.messages_for("q?", [])[-1]["content"]


def test_parse_keeps_a_standalone_rewrite() -> None:
    good = "What religions do people follow in Czechia?"
    assert rewrite.parse(good, FOLLOWUP, HISTORY) == good
    assert rewrite.parse(f"Query: {good}\nmore text", FOLLOWUP, HISTORY) == good
    as_json = '{"query": "religions people follow in Czechia"}'
    assert rewrite.parse(as_json, FOLLOWUP, HISTORY) == "religions people follow in Czechia"


def test_parse_falls_back_to_the_question() -> None:
    for raw in (
        "",
        "   \n ",
        "{not json",
        '{"other": 1}',
        "!!! ???",
        # An answer rather than a query: words from nowhere.
        "The answer is: Czechia is mostly Roman Catholic.",
        # Another question: the previous one repeated.
        "What type of government does Czechia have?",
        # Too long.
        "What religions do people follow in Czechia " + "Czechia " * 60,
        # A subject from nowhere.
        "What religions do people follow in Chile?",
        # Reworded, still pointing back: nothing from the conversation.
        "Which religion do people follow there?",
    ):
        assert rewrite.parse(raw, FOLLOWUP, HISTORY) == FOLLOWUP, raw


class FakeLLM:
    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[list[dict[str, str]]] = []

    async def complete(self, ctx: Any, messages: Any, *args: Any, **kwargs: Any) -> str:
        self.calls.append(messages)
        return self.answer


def _req(rewrite_query: bool | None, history: list[tuple[str, str]]) -> RetrieveRequest:
    return RetrieveRequest(
        ctx=RequestContext(tenant="t", actor="k", role="developer", request_id="r"),
        user="",
        query=FOLLOWUP,
        rag=RagOptions(collection="kb", rewrite_query=rewrite_query),
        history=[ChatMessage(role=r, content=c) for r, c in history],  # type: ignore[arg-type]
    )


async def test_the_model_is_asked_only_when_rewriting_is_on_and_there_are_turns() -> None:
    llm = FakeLLM("What religions do people follow in Czechia?")
    svc = MemoryService(None, None, None, llm, rewrite_query=False)  # type: ignore[arg-type]
    assert not svc._rewrites(_req(None, HISTORY))  # the service default: off
    assert svc._rewrites(_req(True, HISTORY))
    on = MemoryService(None, None, None, llm, rewrite_query=True)  # type: ignore[arg-type]
    assert on._rewrites(_req(None, HISTORY)) and not on._rewrites(_req(False, HISTORY))
    assert await svc._rewritten(_req(True, HISTORY), _no_buffered_turns) == llm.answer
    assert llm.calls[0][-1]["content"].startswith("Conversation: user: What type")
    # No earlier turn: the question stands alone, no model is asked.
    assert await svc._rewritten(_req(True, []), _no_buffered_turns) == FOLLOWUP
    assert len(llm.calls) == 1
    # A model that answers instead of rewriting: the previous user turn in front of a
    # question that points back, any other question as asked.
    bad = MemoryService(None, None, None, FakeLLM("It is Catholic."))  # type: ignore[arg-type]
    assert bad._rewrites(_req(None, HISTORY))  # on by default
    assert (
        await bad._rewritten(_req(True, HISTORY), _no_buffered_turns)
        == f"{HISTORY[0][1]} {FOLLOWUP}"
    )
    plain = _req(True, HISTORY).model_copy(update={"query": "What is the capital of Peru?"})
    assert await bad._rewritten(plain, _no_buffered_turns) == "What is the capital of Peru?"


def test_without_a_rewrite_a_question_that_points_back_gets_the_last_user_turn() -> None:
    assert rewrite.refers_back("And what is its capital?")
    assert rewrite.refers_back("What languages do people speak there?")
    assert rewrite.refers_back("and the currency?")
    assert not rewrite.refers_back("What is the capital of Peru?")
    assert not rewrite.refers_back("Which city is the seat of Thailand's government?")
    assert rewrite.with_last_turn(FOLLOWUP, HISTORY) == f"{HISTORY[0][1]} {FOLLOWUP}"
    assert rewrite.with_last_turn("What is the capital of Peru?", HISTORY) == (
        "What is the capital of Peru?"
    )
    assert rewrite.with_last_turn(FOLLOWUP, [("assistant", "Hello.")]) == FOLLOWUP


async def _no_buffered_turns() -> list[ChatMessage]:
    return []
