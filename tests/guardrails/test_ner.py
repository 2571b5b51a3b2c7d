"""Rampart, the NER beside spaCy: its names, its addresses taking PERSON off streets, the
windows that cover a long text, and the int8 model derived from the shipped 4-bit one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from services.guardrails.adapters.onnx_int8 import dequantize, int8_model
from services.guardrails.adapters.presidio import PresidioPii, with_ner
from services.guardrails.adapters.rampart import RampartNer, model_dir, people, windows


@pytest.fixture(scope="module")
def pii() -> PresidioPii:
    return PresidioPii()


def _people(pii: PresidioPii, text: str) -> list[str]:
    return [text[s.start : s.end] for s in pii.find(text, ["PERSON"], [], 0.5)]


def test_names_spacy_misses_are_found(pii: PresidioPii) -> None:
    # spaCy's small model: "Waldemar Ziegert" cut by "and" (a company joiner), "Fabijan" missed.
    assert _people(pii, "Hi, I'm Waldemar Ziegert and you can reach me at w@example.org.") == [
        "Waldemar Ziegert"
    ]
    assert "Fabijan" in _people(pii, 'Pauliina shouted at Fabijan: "What are you doing here?"')


def test_streets_and_companies_named_after_people_are_not_people(pii: PresidioPii) -> None:
    assert _people(pii, "Friðrik had given Evelyn his address: 314 Viale Leonardi") == [
        "Friðrik",
        "Evelyn",
    ]
    # Rampart calls this one a name; the company word in it says otherwise.
    company = "Piccinni-Bresciani SPA is a design agency based in Comelico."
    assert [company[s:e] for s, e in people(company, pii.ner.tags(company))] == [
        "Piccinni-Bresciani SPA"
    ]
    assert with_ner(company, [], pii.ner.tags(company), 0.5) == []
    company = "We'll meet Wednesday at Smith, Lloyd and Jackson, 9180 Fleming Pines"
    assert _people(pii, company) == []


def test_tags_and_offsets() -> None:
    ner = RampartNer()
    text = "Transfer it to Fernanda Morera Calatayud, Calle Mayor 5, Madrid."
    tags = {(t.type, text[t.start : t.end]) for t in ner.tags(text)}
    assert ("SURNAME", "Calatayud") in tags
    assert any(kind == "STREET_NAME" for kind, _ in tags)
    assert ner.tags("") == []


def test_a_long_text_is_read_in_overlapping_windows() -> None:
    ner = RampartNer()
    filler = "The weather was fine and the meeting went well. " * 60
    text = filler + "Please call Lucrezia Bianchi tomorrow. " + filler
    assert len(ner.tokenizer.encode(text, add_special_tokens=False).ids) > 512
    names = [text[t.start : t.end] for t in ner.tags(text) if t.type.endswith("NAME")]
    assert names == ["Lucrezia", "Bianchi"]


def test_windows_cover_every_token_and_start_at_a_word() -> None:
    word_ids: list[int | None] = [i // 3 for i in range(100)]  # three tokens a word
    spans = windows(word_ids, 10, 4)
    covered = {k for lo, hi in spans for k in range(lo, hi)}
    assert covered == set(range(100))
    assert all(hi - lo <= 10 for lo, hi in spans)
    assert all(word_ids[lo] != word_ids[lo - 1] for lo, _ in spans[1:])


def test_dequantize_unpacks_4_bit_blocks_low_nibble_first() -> None:
    rng = np.random.default_rng(7)
    k, n, block = 40, 3, 16  # K not a multiple of the block: the last block is padded
    blocks = -(-k // block)
    q = rng.integers(0, 16, size=(n, blocks, block), dtype=np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    scales = rng.random(n * blocks, dtype=np.float32) + 0.1
    zeros = rng.integers(0, 16, size=(n, blocks), dtype=np.uint8)
    zpacked = np.zeros((n, -(-blocks // 2)), np.uint8)
    for j in range(blocks):
        zpacked[:, j // 2] |= zeros[:, j] << (4 * (j % 2))
    w = dequantize(packed, scales, zpacked, k=k, n=n, block=block)
    assert w.shape == (k, n) and w.dtype == np.float32
    for col in range(n):
        for row in range(k):
            b, i = divmod(row, block)
            want = (float(q[col, b, i]) - float(zeros[col, b])) * float(scales[col * blocks + b])
            assert w[row, col] == pytest.approx(want, rel=1e-6)
    # No zero points: 8, the middle of the 4-bit range.
    w8 = dequantize(packed, scales, None, k=k, n=n, block=block)
    assert w8[0, 0] == pytest.approx((float(q[0, 0, 0]) - 8.0) * float(scales[0]), rel=1e-6)


def test_the_int8_model_is_derived_once_and_tags_as_the_shipped_one(tmp_path: Path) -> None:
    q4 = model_dir() / "onnx" / "model_q4.onnx"
    made = int8_model(q4, tmp_path)
    assert made.parent == tmp_path and made != q4 and made.stat().st_size > 1_000_000
    stamp = made.stat().st_mtime_ns
    assert int8_model(q4, tmp_path) == made and made.stat().st_mtime_ns == stamp
    shipped, derived = RampartNer(), RampartNer()
    shipped.session = onnxruntime.InferenceSession(str(q4), providers=["CPUExecutionProvider"])
    derived.session = onnxruntime.InferenceSession(str(made), providers=["CPUExecutionProvider"])
    text = "Send it to Lucrezia Bianchi, Via Roma 12, Milano, and to Jiri Holtman in Brno."
    spans = [[(t.type, t.start, t.end) for t in ner.tags(text)] for ner in (shipped, derived)]
    assert spans[0] == spans[1]
    assert {text[s:e] for s, e in people(text, derived.tags(text))} >= {"Lucrezia Bianchi"}
