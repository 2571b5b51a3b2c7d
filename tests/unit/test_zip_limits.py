"""The zip check the gateway (uploads) and the memory parser (docx) share: declared sizes
from the central directory, never inflated."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from libs.errors import EnclaveError
from libs.zip_limits import (
    MAX_ENTRIES,
    MAX_PART_BYTES,
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    ZipRefused,
    check_zip,
    is_zip,
)
from services.gateway.rag_routes import check_upload_zip


def _zip(parts: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return buf.getvalue()


def _declare(data: bytes, size: int) -> bytes:
    """The archive with every central directory entry declaring `size` bytes inflated from
    a tenth of that (a forged header: nothing in it is that big)."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at != -1:
        out[at + 20 : at + 28] = struct.pack("<II", size // 10, size)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def test_a_document_within_the_limits_passes() -> None:
    data = _zip({"word/document.xml": b"<w:document/>" * 100, "[Content_Types].xml": b"<x/>"})
    assert is_zip(data)
    assert check_zip(data) == 1300 + 4
    # Small parts that deflate very well are fine: the ratio counts from 1 MiB on.
    assert check_zip(_zip({"word/styles.xml": b"\0" * 500_000}))


def test_a_zip_bomb_is_refused_from_its_central_directory_without_inflating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = _zip({"word/document.xml": b"<" + b"a" * (MAX_PART_BYTES + 1024) + b"/>"})
    assert len(bomb) < 200_000

    def no_inflating(*_: object) -> None:
        raise AssertionError("the check inflated a part")

    monkeypatch.setattr(zipfile, "_get_decompressor", no_inflating)
    with pytest.raises(ZipRefused, match=r"document\.xml` inflates to"):
        check_zip(bomb)
    assert check_zip(_zip({"word/document.xml": b"<w:document/>"})) == 13


def test_a_part_that_inflates_too_many_times_is_refused() -> None:
    data = _zip({"word/document.xml": b"\0" * (2 * 1024 * 1024)})
    with pytest.raises(ZipRefused, match=f"more than {MAX_RATIO}"):
        check_zip(data)


def test_the_total_and_the_entries_are_bounded() -> None:
    parts = {f"word/media/{i}.bin": bytes(range(256)) * 4 for i in range(4)}
    forged = _declare(_zip(parts), MAX_TOTAL_BYTES // 3)  # each under the part limit
    with pytest.raises(ZipRefused, match=f"more than {MAX_TOTAL_BYTES} bytes"):
        check_zip(forged)
    many = _zip({f"p{i}": b"" for i in range(MAX_ENTRIES + 1)})
    with pytest.raises(ZipRefused, match=f"{MAX_ENTRIES + 1} entries"):
        check_zip(many)


def test_what_is_no_zip_is_refused() -> None:
    assert not is_zip(b"hello")
    for junk in (b"PK\x03\x04 not really a zip", b"", b"\xff" * 100):
        with pytest.raises(ZipRefused, match="not a readable zip"):
            check_zip(junk)


def test_the_gateway_answers_a_refused_zip_with_400_invalid_file() -> None:
    bomb = _zip({"word/document.xml": b"a" * (MAX_PART_BYTES + 1)})
    with pytest.raises(EnclaveError) as caught:
        check_upload_zip(bomb)
    info = caught.value.info
    assert (info.status, info.code, info.param) == (400, "invalid_file", "file")
    assert "inflates" in info.message
    check_upload_zip(_zip({"word/document.xml": b"<w:document/>"}))
