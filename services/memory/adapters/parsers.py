"""Document parsers: txt, md, html (BeautifulSoup), pdf (pypdf), docx (zip + XML).

Each returns the document's pages as (page number, text); only PDFs have real pages.
"""

from __future__ import annotations

import io
import re
import zipfile
from xml.etree import ElementTree

FORMATS = ("txt", "md", "html", "htm", "pdf", "docx")


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
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ElementTree.fromstring(z.read("word/document.xml"))
        ns = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
        paras = ["".join(t.text or "" for t in p.iter(f"{ns}t")) for p in root.iter(f"{ns}p")]
        return [(None, "\n\n".join(paras))]
    text = data.decode("utf-8", errors="replace")
    if kind == "md":
        # Keep the words of links and images, drop the markup that only adds noise.
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return [(None, text)]
