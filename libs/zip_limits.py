"""How much a zip archive (a .docx, an .xlsx) may hold before anyone inflates it. Pure.

`check_zip(data)` reads the archive's central directory only (each entry's declared sizes,
no part is inflated), in time linear in the archive, and refuses it by name
(`ZipRefused`) when one part declares more than `MAX_PART_BYTES`, all parts together
more than `MAX_TOTAL_BYTES`, a part of at least `RATIO_FLOOR_BYTES` inflates more than
`MAX_RATIO` times its compressed size, or it has more than `MAX_ENTRIES` entries. The
gateway refuses such an upload (400 `invalid_file`) before it is stored; the memory
service's docx parser applies the same limits, and since zipfile stops reading at the
declared size it also reads the document part no further than `MAX_PART_BYTES` (a
header that lies about its size inflates no more).
"""

from __future__ import annotations

import io
import zipfile

# One part (the document's XML) inflated.
MAX_PART_BYTES = 32 * 1024 * 1024
# Every part together: styles, media, headers, the document.
MAX_TOTAL_BYTES = 64 * 1024 * 1024
# Parts: a real document has tens, a long one with its images a few hundred.
MAX_ENTRIES = 2_000
# Inflated / compressed, for a part big enough to matter (XML deflates 5-20 times; a bomb
# of one repeated byte about a thousand).
MAX_RATIO = 200
RATIO_FLOOR_BYTES = 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end


class ZipRefused(ValueError):
    """The archive exceeds a limit, or is no readable zip."""


def is_zip(data: bytes) -> bool:
    return data[:4] in ZIP_MAGIC


def check_zip(data: bytes) -> int:
    """The archive's declared inflated size, or `ZipRefused` naming the limit it passes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ZipRefused(f"not a readable zip archive: {exc}") from None
    if len(infos) > MAX_ENTRIES:
        raise ZipRefused(f"the archive has {len(infos)} entries, more than {MAX_ENTRIES}")
    total = 0
    for info in infos:
        size = info.file_size
        if size > MAX_PART_BYTES:
            raise ZipRefused(
                f"`{info.filename[:100]}` inflates to {size} bytes, more than {MAX_PART_BYTES}"
            )
        if size >= RATIO_FLOOR_BYTES and size > MAX_RATIO * max(info.compress_size, 1):
            raise ZipRefused(
                f"`{info.filename[:100]}` inflates {size // max(info.compress_size, 1)} times "
                f"its compressed size, more than {MAX_RATIO}"
            )
        total += size
        if total > MAX_TOTAL_BYTES:
            raise ZipRefused(f"the archive inflates to more than {MAX_TOTAL_BYTES} bytes")
    return total
