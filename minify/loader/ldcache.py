"""A reader for glibc's /etc/ld.so.cache, in Python, for any target root.

Formats (glibc sysdeps/generic/dl-cache.h):
- new: "glibc-ld.so.cache" "1.1", u32 nlibs, u32 len_strings, u8 flags, 3 pad,
  u32 extension_offset, 3 x u32 unused (48 bytes); nlibs entries of 24 bytes
  (i32 flags, u32 key, u32 value, u32 osversion, u64 hwcap); string offsets are from
  the start of this header.
- old: "ld.so-1.7.0" (12 bytes), u32 nlibs, entries of 12 bytes (i32 flags, u32 key,
  u32 value); string offsets are from the end of the entry array.
- compat: an old table followed by a new one at the next 8-byte boundary; the new one
  is what glibc reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

NEW_MAGIC = b"glibc-ld.so.cache1.1"
OLD_MAGIC = b"ld.so-1.7.0"
EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GLIBC_HWCAPS = 1
#: hwcap field bit saying "the low 32 bits index the glibc-hwcaps subfolder table"
HWCAP_EXTENSION = 1 << 62


class CacheFormatError(ValueError):
    """The file is not an ld.so.cache we can read."""


@dataclass(frozen=True)
class CacheEntry:
    """One row of the cache, as ldconfig wrote it (file order is the loader's order)."""

    flags: int
    name: str
    path: str
    hwcap: int = 0
    hwcaps_subdir: str | None = None  # "x86-64-v3" for a glibc-hwcaps entry


@dataclass(frozen=True)
class LdCache:
    """A parsed ld.so.cache: its entries in file order, and an index by name."""

    entries: tuple[CacheEntry, ...]
    format: str  # "new", "old" or "compat"
    big_endian: bool = False  # the new format's byte order (flags 3); old formats are little
    by_name: dict[str, tuple[CacheEntry, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # an index by name, in file order: lookups happen once per library search
        index: dict[str, list[CacheEntry]] = {}
        for entry in self.entries:
            index.setdefault(entry.name, []).append(entry)
        self.by_name.update((k, tuple(v)) for k, v in index.items())

    def lookup(self, name: str, flags: tuple[int, ...], hwcaps: tuple[str, ...]) -> str | None:
        """The path the cache gives for ``name``: the best glibc-hwcaps entry among
        ``hwcaps`` (best first), else the first plain entry in file order. Only entries
        whose flags are among ``flags`` count (_dl_cache_check_flags)."""
        best: tuple[int, str] | None = None
        plain: str | None = None
        for entry in self.by_name.get(name, ()):
            if entry.flags not in flags:
                continue
            if entry.hwcaps_subdir is not None:
                if entry.hwcaps_subdir in hwcaps:
                    rank = hwcaps.index(entry.hwcaps_subdir)
                    if best is None or rank < best[0]:
                        best = (rank, entry.path)
            elif entry.hwcap & ~HWCAP_EXTENSION and not hwcaps:
                continue  # a legacy hwcap entry; a baseline CPU would not pick it
            elif plain is None:
                plain = entry.path
        return best[1] if best is not None else plain


#: glibc knows a handful of glibc-hwcaps subfolders; a path is at most PATH_MAX.
MAX_HWCAPS_NAMES = 256
MAX_STRING = 4096


def parse(data: bytes) -> LdCache:
    """Parse the bytes of an ld.so.cache file (any of the three formats); anything
    out of range is a ``CacheFormatError``, never a crash, and work is linear in size."""
    try:
        return _parse(data)
    except struct.error as exc:
        raise CacheFormatError(f"a field lies outside the file ({exc})") from None


def _parse(data: bytes) -> LdCache:
    if data.startswith(NEW_MAGIC):
        return LdCache(_parse_new(data, 0), "new", _big(data, 0))
    if data.startswith(OLD_MAGIC):
        if len(data) < 16:
            raise CacheFormatError("truncated old-format header")
        (nlibs,) = struct.unpack_from("<I", data, 12)
        table_end = 16 + nlibs * 12
        new_at = (table_end + 7) & ~7
        if data[new_at : new_at + len(NEW_MAGIC)] == NEW_MAGIC:
            return LdCache(_parse_new(data, new_at), "compat", _big(data, new_at))
        return LdCache(_parse_old(data, nlibs, table_end), "old")
    raise CacheFormatError("not an ld.so.cache (unknown magic)")


def _big(data: bytes, base: int) -> bool:
    return len(data) > base + 28 and data[base + 28] == 3


def _string(data: bytes, offset: int) -> str:
    """The NUL-terminated string at ``offset``: at most ``MAX_STRING`` bytes are looked
    at, so a hostile file cannot make every entry scan the rest of it."""
    if offset >= len(data):
        raise CacheFormatError(f"string offset {offset} outside the file")
    end = data.find(b"\0", offset, offset + MAX_STRING)
    if end < 0:
        raise CacheFormatError(f"no string of at most {MAX_STRING} bytes at offset {offset}")
    return data[offset:end].decode("utf-8", "surrogateescape")


def _strings_in(data: bytes, start: int, end: int) -> dict[int, str]:
    """Every NUL-terminated string of the string area ``[start, end)``, by offset: one
    split of the area instead of a search per entry (Debian's cache: 1,410 strings).
    What ``_string`` would refuse (longer than ``MAX_STRING``, or not ended inside the
    area) is left out, so that an offset to it is read, and refused, by ``_string``."""
    found: dict[int, str] = {}
    at = start
    for raw in data[start:end].split(b"\0")[:-1]:
        if len(raw) < MAX_STRING:
            found[at] = raw.decode("utf-8", "surrogateescape")
        at += len(raw) + 1
    return found


def _strings_at(data: bytes, start: int, end: int) -> Callable[[int], str]:
    """The string at an offset: taken from the area ``[start, end)`` as split once by
    ``_strings_in``; any other offset (an empty string's too) is read, or refused, by
    ``_string``."""
    split = _strings_in(data, start, end).get

    def at(offset: int) -> str:
        return split(offset) or _string(data, offset)

    return at


def _parse_old(data: bytes, nlibs: int, table_end: int) -> tuple[CacheEntry, ...]:
    if table_end > len(data):
        raise CacheFormatError("entry table runs past the end of the file")
    out = []
    at = _strings_at(data, table_end, len(data))
    for flags, key, value in struct.iter_unpack("<iII", data[16:table_end]):
        out.append(CacheEntry(flags, at(table_end + key), at(table_end + value)))
    return tuple(out)


def _parse_new(data: bytes, base: int) -> tuple[CacheEntry, ...]:
    if len(data) < base + 48:
        raise CacheFormatError("truncated header")
    nlibs, _len_strings, flags = struct.unpack_from("<IIB", data, base + 20)
    endian = ">" if flags == 3 else "<"  # 2 = little endian, 3 = big endian
    nlibs, len_strings = struct.unpack_from(endian + "II", data, base + 20)
    (ext_offset,) = struct.unpack_from(endian + "I", data, base + 32)
    table_end = base + 48 + nlibs * 24
    if table_end > len(data):
        raise CacheFormatError("entry table runs past the end of the file")
    subdirs = _hwcaps_table(data, base, ext_offset, endian)
    out = []
    at = _strings_at(data, table_end, min(len(data), table_end + len_strings))
    for eflags, key, value, _os, hwcap in struct.iter_unpack(endian + "iIIIQ", data[base + 48 : table_end]):
        subdir = None
        if hwcap & HWCAP_EXTENSION:
            index = hwcap & 0xFFFFFFFF
            subdir = subdirs[index] if index < len(subdirs) else f"#{index}"
        out.append(CacheEntry(eflags, at(base + key), at(base + value), hwcap, subdir))
    return tuple(out)


def _hwcaps_table(data: bytes, base: int, ext_offset: int, endian: str) -> tuple[str, ...]:
    """The glibc-hwcaps subfolder names of the cache extension (glibc >= 2.33)."""
    if not ext_offset or base + ext_offset + 8 > len(data):
        return ()
    magic, count = struct.unpack_from(endian + "II", data, base + ext_offset)
    if magic != EXTENSION_MAGIC:
        return ()
    for i in range(min(count, MAX_HWCAPS_NAMES)):
        at = base + ext_offset + 8 + i * 16
        if at + 16 > len(data):
            break
        tag, _flags, offset, size = struct.unpack_from(endian + "IIII", data, at)
        if tag == EXTENSION_TAG_GLIBC_HWCAPS:
            if size // 4 > MAX_HWCAPS_NAMES:
                raise CacheFormatError(f"{size // 4} glibc-hwcaps subfolder names (glibc has a handful)")
            names = []
            for j in range(size // 4):
                (string_at,) = struct.unpack_from(endian + "I", data, base + offset + j * 4)
                names.append(_string(data, base + string_at))
            return tuple(names)
    return ()


# -- writing -------------------------------------------------------------------------

#: ``cache_file_new.flags``: the byte order (dl-cache.h cache_file_new_flags_endian_*).
_ENDIAN_FLAGS = {False: 2, True: 3}


def write(entries: tuple[CacheEntry, ...], *, big_endian: bool) -> bytes:
    """A glibc-ld.so.cache1.1 file listing ``entries``, in their order.

    The order must be ldconfig's: ld.so looks names up by binary search over the table
    (elf/dl-cache.c ``search_cache``), so the caller passes a subsequence of a cache
    ldconfig wrote, which keeps that order. glibc-hwcaps entries get a new subfolder
    table holding only the names they use, in the order first used. The same entries
    give the same bytes: no time, no generator string."""
    end = ">" if big_endian else "<"
    subdirs = list(dict.fromkeys(e.hwcaps_subdir for e in entries if e.hwcaps_subdir is not None))
    table_at = 48 + 24 * len(entries)
    strings = bytearray()
    offsets: dict[str, int] = {}

    def intern(text: str) -> int:
        if text not in offsets:
            offsets[text] = table_at + len(strings)
            strings.extend(text.encode("utf-8", "surrogateescape") + b"\0")
        return offsets[text]

    rows = bytearray()
    for entry in entries:
        hwcap = entry.hwcap
        if entry.hwcaps_subdir is not None:
            hwcap = HWCAP_EXTENSION | subdirs.index(entry.hwcaps_subdir)
        key, value = intern(entry.name), intern(entry.path)
        rows += struct.pack(end + "iIIIQ", entry.flags, key, value, 0, hwcap)
    names = [intern(name) for name in subdirs]
    extension = b""
    ext_offset = 0
    if names:
        ext_offset = (table_at + len(strings) + 3) & ~3
        strings.extend(b"\0" * (ext_offset - table_at - len(strings)))
        array_at = ext_offset + 8 + 16
        extension = struct.pack(end + "II", EXTENSION_MAGIC, 1)
        extension += struct.pack(end + "IIII", EXTENSION_TAG_GLIBC_HWCAPS, 0, array_at, 4 * len(names))
        extension += b"".join(struct.pack(end + "I", n) for n in names)
    head = NEW_MAGIC + struct.pack(end + "IIB3xI12x", len(entries), len(strings), _ENDIAN_FLAGS[big_endian], ext_offset)
    return bytes(head + rows + strings + extension)
