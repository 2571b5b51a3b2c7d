"""IndexedContextEnhancer finds the same token as Presidio's own walk, for every offset."""

from __future__ import annotations

import spacy
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

from services.guardrails.adapters.presidio import IndexedContextEnhancer

TEXTS = [
    "Call me at 555-124564 , or  write to ada@example.com.\n\nThanks, Ada",
    "01001001 01100111 01101110 01101111 01110010 01100101",
    "date,units,revenue\n2024-03-01,417,12345678\n2024-03-02,9,87654321\n",
    "  leading spaces,\ttabs\tand Ünïcödé wörds — dashes…",
]


def _token(finder: object, start: int, doc: object, starts: list[int]) -> int | None:
    try:
        return finder._find_index_of_match_token("w", start, doc, starts)  # type: ignore[attr-defined, no-any-return]
    except ValueError:
        return None


def test_the_token_of_every_offset_is_presidios() -> None:
    nlp = spacy.blank("en")
    ours, theirs = IndexedContextEnhancer(), LemmaContextAwareEnhancer()
    for text in TEXTS:
        doc = nlp(text)
        starts = [t.idx for t in doc]
        for start in range(len(text) + 1):
            want = _token(theirs, start, doc, starts)
            assert _token(ours, start, doc, starts) == want, (text, start)
        # Past the last token there is none: both refuse.
        assert want is None
    # A new document is not answered from the last one's token ends.
    short = nlp("a b")
    assert _token(ours, 2, short, [t.idx for t in short]) == 1


def test_the_url_gate_skips_no_text_presidio_finds_a_url_in() -> None:
    """`could_hold_url` is a necessary condition of Presidio's URL patterns: on the bench's
    sentences and on odd cases, every text they find a URL in passes it."""
    from presidio_analyzer.predefined_recognizers import UrlRecognizer

    from bench.guardrails import pe_sentences, pii_set
    from services.guardrails.adapters.presidio import could_hold_url

    theirs = UrlRecognizer()
    odd = [
        "see WWW.EXAMPLE.COM/x",
        "HTTPS://A.B.IO",
        "x.co",
        "-.io",
        "9.ai/p",
        "\u017fite.\u212aR and more",  # letters that case-fold into [a-z]
        "\u0130stanbul.\u0131o",
    ]
    texts = odd + [t for t, _ in pii_set()[:1500]] + [t for t, _ in pe_sentences("tune", 500)]
    found = 0
    for text in texts:
        if theirs.analyze(text, ["URL"]):
            found += 1
            assert could_hold_url(text), text
    assert found > 100
    # A pasted table of numbers holds no URL, and its patterns are not run on it.
    table = "date,units,revenue\n" + "\n".join(
        f"2024-03-{d:02d},{d * 7},{d * 1234567}" for d in range(1, 29)
    )
    assert not could_hold_url(table)
