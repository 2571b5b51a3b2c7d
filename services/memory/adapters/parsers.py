"""Document parsers: txt, md, html (BeautifulSoup), pdf (pypdf), docx (zip + XML).

Each returns the document's pages as (page number, text); only PDFs have real pages.
"""

from __future__ import annotations

import io
import re
import zipfile
from xml.etree import ElementTree

from libs.zip_limits import MAX_PART_BYTES, ZipRefused, check_zip

FORMATS = ("txt", "md", "html", "htm", "pdf", "docx")
# Markdown links and images: `[words](target)`. Neither bracket run may contain another
# opening bracket, so each scan stops at the next one and the pattern is linear in the text
# (with `[^\]]*`, 300k `[` took quadratic time).
_MD_LINK = re.compile(r"!?\[([^\[\]]*)\]\([^()]*\)")


class UnsupportedFormat(ValueError):
    pass


def file_format(filename: str, data: bytes) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if data[:5] == b"%PDF-":
        return "pdf"
    if ext in FORMATS:
        return "html" if ext == "htm" else ext
    if data[:2] == b"PK" and b"word/document.xml" in data[:4096]:
        return "docx"
    head = data[:512].lower()
    if b"<html" in head or b"<!doctype html" in head:
        return "html"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedFormat(f"unsupported file format `{ext or 'binary'}`") from None
    return "txt"


def parse(filename: str, data: bytes) -> list[tuple[int | None, str]]:
    kind = file_format(filename, data)
    if kind == "pdf":
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        return [(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
    if kind == "html":
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(data, "html.parser")
        for tag in soup(["script", "style", "noscript"]):
            tag.decompose()
        return [(None, soup.get_text("\n"))]
    if kind == "docx":
        root = ElementTree.fromstring(_docx_xml(data))
        ns = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
        paras = ["".join(t.text or "" for t in p.iter(f"{ns}t")) for p in root.iter(f"{ns}p")]
        return [(None, "\n\n".join(paras))]
    text = data.decode("utf-8", errors="replace")
    if kind == "md":
        # Keep the words of links and images, drop the markup that only adds noise.
        text = _MD_LINK.sub(r"\1", text)
    return [(None, text)]


def _docx_xml(data: bytes) -> bytes:
    """The document part of a docx, inflated no further than MAX_PART_BYTES; an archive
    past the limits of libs/zip_limits.py (the gateway's upload check) is refused first."""
    try:
        check_zip(data)
    except ZipRefused as exc:
        raise UnsupportedFormat(f"not a docx we read: {exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = z.getinfo("word/document.xml")
            # zipfile stops at the declared size (checked above), so a forged header cannot
            # inflate more; and the read itself is bounded too.
            with z.open(info) as part:
                xml = part.read(MAX_PART_BYTES + 1)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UnsupportedFormat(f"not a readable docx: {exc}") from None
    if len(xml) > MAX_PART_BYTES:
        raise UnsupportedFormat(f"the docx's text inflates past {MAX_PART_BYTES} bytes")
    return xml
