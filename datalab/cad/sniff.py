"""Which CAD format a file is, decided by its content, never by its name.

CAD parsers are large C/C++ code bases; they must only ever see bytes that
already look like the format they parse. ``sniff`` reads at most the first
64 KiB (plus the file size) and answers one of ``step``, ``stl-binary``,
``stl-ascii`` or ``dxf``, or raises ``NotCad`` with a reason that names the
file and what its bytes are instead (a ZIP, a PDF, text garbage, ...). A file
named ``.stp`` that is a ZIP is therefore rejected as a ZIP.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

HEAD = 64 << 10
FORMATS = ("step", "stl", "dxf")

# Magic numbers of things people deliver by mistake (or on purpose).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\xd0\xcf\x11\xe0", "an OLE2 compound file (old Office / SolidWorks / Inventor native)"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"AutoCAD Binary DXF", "a binary DXF (not supported; deliver ASCII DXF)"),
    (b"AC10", "a DWG drawing (deliver DXF)"),
)
_STL_FACET = re.compile(rb"^\s*solid\b[^\n]*\n\s*(facet\s+normal|endsolid)", re.IGNORECASE)
_DXF_GROUP = re.compile(rb"^\s*(-?\d{1,4})\s*\r?\n")


class NotCad(ValueError):
    """The file is not a CAD format the lab reads; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Sniffed:
    format: str  # step | stl | dxf
    detail: str  # step | binary | ascii | dxf
    size: int

    @property
    def label(self) -> str:
        return self.format if self.format != "stl" else f"stl-{self.detail}"


def _is_dxf(head: bytes) -> bool:
    """ASCII DXF: pairs of lines, an integer group code then a value; starts with 0/SECTION (or 999 comment)."""
    text = head.lstrip(b"\xef\xbb\xbf")
    lines = text.splitlines()[:16]
    if len(lines) < 4:
        return False
    pairs = 0
    for code, value in zip(lines[0::2], lines[1::2], strict=False):
        if not _DXF_GROUP.match(code + b"\n"):
            return False
        if pairs == 0 and code.strip() not in (b"0", b"999"):
            return False
        if code.strip() == b"0" and pairs == 0 and value.strip().upper() != b"SECTION":
            return False
        pairs += 1
    return pairs >= 2


def sniff_bytes(head: bytes, size: int, name: str = "file") -> Sniffed:
    """Decide the format from the first bytes and the total size (pure, for fuzzing)."""
    if size == 0:
        raise NotCad(f"{name}: the file is empty (0 bytes)")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise NotCad(f"{name}: the content is {what}, not STEP, STL or DXF (rule: format by content)")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"ISO-10303-21"):
        return Sniffed("step", "step", size)
    if stripped[:12].upper().startswith(b"ISO-10303-28") or stripped.startswith(b"<?xml"):
        raise NotCad(f"{name}: the content is XML (STEP-XML / 3MF?), not an ISO 10303-21 STEP file")
    # Binary STL: 80-byte header, uint32 count, 50 bytes a triangle. The
    # header may begin with "solid" (many exporters write it), so the size
    # formula decides first.
    if size >= 84 and len(head) >= 84:
        (n,) = struct.unpack_from("<I", head, 80)
        if size == 84 + 50 * n:
            return Sniffed("stl", "binary", size)
    if _STL_FACET.match(stripped):
        return Sniffed("stl", "ascii", size)
    if _is_dxf(head):
        return Sniffed("dxf", "dxf", size)
    if stripped[:5].lower() == b"solid":
        raise NotCad(f"{name}: starts like an ASCII STL ('solid') but no 'facet normal' or 'endsolid' follows, "
                     f"and its size {size:,} does not match a binary STL (84 + 50 x triangles)")
    if size >= 84 and len(head) >= 84:
        (n,) = struct.unpack_from("<I", head, 80)
        if 0 < n < (1 << 28) and abs(size - (84 + 50 * n)) < 50 * n:
            raise NotCad(f"{name}: looks like a binary STL declaring {n:,} triangles ({84 + 50 * n:,} bytes) "
                         f"but has {size:,} bytes: truncated or padded")
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head[:4096]) / max(1, min(len(head), 4096))
    what = "text" if printable > 0.95 else "binary data"
    raise NotCad(f"{name}: {what} that is none of STEP (ISO-10303-21 header), STL (binary size 84+50n or "
                 "'solid ... facet') or DXF (group-code pairs starting with 0/SECTION)")


def sniff(path: Path, name: str | None = None) -> Sniffed:
    """Sniff a file on disk (reads at most 64 KiB)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEAD)
    return sniff_bytes(head, size, name or path.name)
