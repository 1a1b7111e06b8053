"""``minify image --check``: which paths of DEST differ from the image minify would
write now, so "out of date" names what changed (the first ``SHOWN``, then a count).

DEST is read with the same reader as ``--from`` (its layers, in order), each member
described by kind, mode, owner and content digest or link target; the plan is
described the same way, with the digests of the files just written.
"""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import tarfile
import tempfile
import zlib
from typing import IO, cast

from minify.errors import MinifyError
from minify.plan.image import EntryType, ImagePlan
from minify.sources.reader import ImageSource, Platform, SourceTransport, read_image

#: Paths named before the count.
SHOWN = 20
#: Members read from DEST at most (as an unpacked layer may hold).
MAX_MEMBERS = 2_000_000
CHUNK = 1 << 20

Described = tuple[str, int, tuple[int, int], str | None]


def differences(transport: str, path: str, plan: ImagePlan, hashes: dict[str, str], platform: Platform) -> list[str]:
    """One line per path that differs (the first ``SHOWN``), then how many more."""
    want = {e.path: _entry(e.type, e.mode, e.owner, hashes.get(e.path) or e.target) for e in plan.entries}
    try:
        have = _members(ImageSource(SourceTransport(transport), path), platform)
    except (MinifyError, OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        return [f"{path}: its files cannot be read to compare ({exc})"]
    changed = sorted(p for p in want.keys() | have.keys() if want.get(p) != have.get(p))
    lines = [f"{p}: {_how(have.get(p), want.get(p))}" for p in changed[:SHOWN]]
    if len(changed) > SHOWN:
        lines.append(f"... and {len(changed) - SHOWN} more paths")
    if not changed:
        lines.append("its files are the same: the image config or its metadata differs")
    return lines


def _entry(kind: EntryType, mode: int, owner: tuple[int, int], data: str | None) -> Described:
    if kind is EntryType.DIR:
        data = None
    return (kind.value, mode & 0o7777, owner, data)


def _how(have: Described | None, want: Described | None) -> str:
    if have is None:
        return "not in DEST, would be added"
    if want is None:
        return "in DEST, would be left out"
    if have[0] != want[0]:
        return f"a {have[0]} in DEST, would be a {want[0]}"
    what = [n for n, a, b in zip(("mode", "owner", "content"), have[1:], want[1:], strict=True) if a != b]
    return f"its {' and '.join(what)} would change"


def _members(source: ImageSource, platform: Platform) -> dict[str, Described]:
    """Every path DEST's layers hold (a later layer's wins), described."""
    out: dict[str, Described] = {}
    with tempfile.TemporaryDirectory(prefix="minify-check-") as work:
        image, blobs = read_image(source, platform, work)
        try:
            for layer in image.layers:
                with blobs.open(layer.blob) as stored:
                    head = stored.read(2)
                    stored.seek(0)
                    plain = gzip.GzipFile(fileobj=stored) if head == b"\x1f\x8b" else stored
                    _read_layer(cast("IO[bytes]", plain), out)
        finally:
            blobs.close()
    return out


def _read_layer(stream: IO[bytes], out: dict[str, Described]) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, info in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise MinifyError(f"more than {MAX_MEMBERS} members in one layer")
            path = posixpath.normpath("/" + info.name)
            if path == "/":
                continue
            if info.isdir():
                kind, data = EntryType.DIR, None
            elif info.issym():
                kind, data = EntryType.SYMLINK, info.linkname
            elif info.islnk():
                kind, data = EntryType.HARDLINK, posixpath.normpath("/" + info.linkname)
            else:
                kind, data = EntryType.FILE, _sha256(tar.extractfile(info))
            out[path] = _entry(kind, info.mode, (info.uid, info.gid), data)


def _sha256(handle: IO[bytes] | None) -> str | None:
    if handle is None:
        return None
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
