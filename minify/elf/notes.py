"""The FDO dlopen notes of an ELF file (``.note.dlopen``), read by hand from the
note sections or segments: libraries a program may dlopen, which no loader table
names."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minify.elf.files import ElfHeader, Endian, Opened, _read_header, _segments, _use

if TYPE_CHECKING:
    from collections.abc import Iterator


#: The FDO dlopen note (systemd's ELF_NOTE_DLOPEN_TYPE, owner "FDO").
DLOPEN_NOTE_TYPE = 0x407C0C0A


@dataclass(frozen=True)
class DlopenNote:
    """One entry of a ``.note.dlopen`` note: libraries the object may dlopen."""

    feature: str
    description: str
    priority: str  # required | recommended | suggested
    sonames: tuple[str, ...]


SHT_NOTE = 7
PT_NOTE = 4
#: Bytes of notes read from one file at most: dlopen notes are a few KB; a file whose
#: note sections are larger (annobin's are large, but they are not read) is not trusted.
MAX_NOTE_BYTES = 16 << 20


def read_dlopen_notes(
    source: str | Opened, header: ElfHeader | None = None
) -> tuple[tuple[DlopenNote, ...], tuple[str, ...]]:
    """The FDO dlopen notes of an ELF file (https://systemd.io/ELF_DLOPEN_METADATA/),
    and warnings about malformed ones.

    Only notes with owner "FDO" and type 0x407c0c0a are looked at, read straight from
    the SHT_NOTE sections (or PT_NOTE segments): other notes, such as annobin's
    ``.gnu.build.attributes`` with binary owner names, can neither fail nor slow this.
    ``header``: the file's header, when the caller has read and checked it already.
    """
    with _use(source) as f:
        header, size = (header, f.st.st_size) if header is not None else _read_header(f)
        out: list[DlopenNote] = []
        warned: list[str] = []
        for offset, length, align in _note_areas(f, header, size):
            for owner, note_type, desc in _notes(f.pread(length, offset), header.endian, align):
                if owner != b"FDO" or note_type != DLOPEN_NOTE_TYPE:
                    continue
                entries, problem = _dlopen_entries(desc)
                out.extend(entries)
                if problem:
                    warned.append(f"{f.name}: malformed .note.dlopen ignored ({problem})")
        return tuple(out), tuple(warned)


def _note_areas(f: Opened, header: ElfHeader, size: int) -> list[tuple[int, int, int]]:
    """(offset, size, alignment) of the note sections, or of the PT_NOTE segments when
    the file has no section headers; bounded by the file and ``MAX_NOTE_BYTES``."""
    fmt = "<" if header.endian is Endian.LITTLE else ">"
    head = f.pread(64, 0)
    areas: list[tuple[int, int, int]] = []
    if header.elf_class == 64:
        (e_shoff,) = struct.unpack_from(fmt + "Q", head, 40)
        e_shentsize, e_shnum = struct.unpack_from(fmt + "HH", head, 58)
        e_phoff, e_phnum = struct.unpack_from(fmt + "Q", head, 32)[0], struct.unpack_from(fmt + "H", head, 56)[0]
    else:
        (e_shoff,) = struct.unpack_from(fmt + "I", head, 32)
        e_shentsize, e_shnum = struct.unpack_from(fmt + "HH", head, 46)
        e_phoff, e_phnum = struct.unpack_from(fmt + "I", head, 28)[0], struct.unpack_from(fmt + "H", head, 44)[0]
    want = 64 if header.elf_class == 64 else 40
    if e_shnum and e_shentsize == want and e_shoff + e_shnum * want <= size:
        table = f.pread(e_shnum * want, e_shoff)
        for i in range(e_shnum):
            if header.elf_class == 64:
                sh_type, _, _, sh_offset, sh_size, _, _, sh_align = struct.unpack_from(
                    fmt + "IQQQQIIQ", table, i * 64 + 4
                )
            else:
                sh_type, _, _, sh_offset, sh_size, _, _, sh_align = struct.unpack_from(
                    fmt + "IIIIIIII", table, i * 40 + 4
                )
            if sh_type == SHT_NOTE:
                areas.append((sh_offset, sh_size, sh_align))
    elif e_phnum:
        entsize = 56 if header.elf_class == 64 else 32
        table = f.pread(e_phnum * entsize, e_phoff)
        areas.extend((o, n, a) for t, o, n, a in _segments(table, fmt, header.elf_class, e_phnum) if t == PT_NOTE)
    out = []
    budget = MAX_NOTE_BYTES
    for offset, length, align in areas:
        if offset + length > size or length > budget:
            continue
        budget -= length
        out.append((offset, length, 8 if align == 8 else 4))
    return out


def _notes(data: bytes, endian: Endian, align: int) -> Iterator[tuple[bytes, int, bytes]]:
    """(owner, type, descriptor) of each note in a note area; stops at the first note
    that does not fit (the gABI layout: name and descriptor padded to ``align``)."""
    fmt = "<III" if endian is Endian.LITTLE else ">III"
    at = 0
    while at + 12 <= len(data):
        namesz, descsz, note_type = struct.unpack_from(fmt, data, at)
        name_at = at + 12
        desc_at = name_at + -(-namesz // align) * align
        end = desc_at + -(-descsz // align) * align
        if desc_at + descsz > len(data):
            return
        yield data[name_at : name_at + namesz].rstrip(b"\0"), note_type, data[desc_at : desc_at + descsz]
        at = max(end, at + 12)


def _dlopen_entries(desc: bytes) -> tuple[list[DlopenNote], str | None]:
    """The entries of one dlopen note's JSON, and what was wrong with it, if anything."""

    try:
        entries = json.loads(desc.split(b"\0", 1)[0])
    except (ValueError, RecursionError):
        return [], "its JSON does not parse"
    if not isinstance(entries, list):
        return [], "its JSON is not a list"
    out = []
    problem = None
    for entry in entries:
        sonames = entry.get("soname") if isinstance(entry, dict) else None
        if not isinstance(sonames, list) or not all(isinstance(s, str) for s in sonames):
            problem = "an entry without a list of sonames"
            continue
        assert isinstance(entry, dict)
        priority = str(entry.get("priority", "recommended"))
        if priority not in ("required", "recommended", "suggested"):
            problem = f"unknown priority {priority!r}"
            continue
        out.append(
            DlopenNote(
                feature=str(entry.get("feature", "")),
                description=str(entry.get("description", "")),
                priority=priority,
                sonames=tuple(sonames),
            )
        )
    return out, problem
