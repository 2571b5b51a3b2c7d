"""Document parsers on hostile input: linear time, bounded inflation, clear refusals."""

from __future__ import annotations

import io
import zipfile

import pytest

from libs.zip_limits import MAX_PART_BYTES
from services.memory.adapters.parsers import UnsupportedFormat, parse

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def _docx(document_xml: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", document_xml)
    return buf.getvalue()


def test_markdown_links_keep_their_words() -> None:
    text = parse("a.md", b"See [the handbook](http://x/h.pdf) and ![logo](l.png).")[0][1]
    assert text == "See the handbook and logo."


def test_300k_opening_brackets_parse_in_linear_time() -> None:
    # Quadratic before (hours for this input); pytest's timeout is the guard.
    for hostile in (b"[" * 300_000, b"[a](" * 100_000, b"](" * 150_000):
        [(_, text)] = parse("a.md", hostile)
        assert len(text) == len(hostile)


def test_a_docx_reads_its_paragraphs() -> None:
    xml = f'<w:document xmlns:w="{W}"><w:body><w:p><w:r><w:t>Leave is 25 days.</w:t></w:r></w:p>'
    xml += "<w:p><w:r><w:t>Ask HR.</w:t></w:r></w:p></w:body></w:document>"
    assert parse("h.docx", _docx(xml.encode()))[0][1] == "Leave is 25 days.\n\nAsk HR."


def test_a_zip_bomb_docx_is_refused_without_inflating_it() -> None:
    bomb = _docx(b"<" + b"a" * (MAX_PART_BYTES + 1024) + b"/>")
    assert len(bomb) < 200_000  # small on the wire
    with pytest.raises(UnsupportedFormat, match="inflates"):
        parse("bomb.docx", bomb)


def test_a_broken_docx_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedFormat, match="docx"):
        parse("x.docx", b"PK\x03\x04 not really a zip")
