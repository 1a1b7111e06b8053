"""A layer blob read as a plain tar stream: its compression sniffed (not trusted from
the media type alone), its digest checked as it is read, and every byte it
decompresses to counted against the unpack budget, so a small blob cannot expand
without bound.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import zlib
from typing import IO, cast

from minify.errors import HostileLayer, ImageSourceError
from minify.sources.reader import Blobs, Compression, LayerRef

#: Members one layer may hold.


#: The largest single read tarfile may ask for (a PAX header): more is hostile.
MAX_READ = 64 << 20


CHUNK = 1 << 20


def decompress(blobs: Blobs, layer: LayerRef, dest: str, budget: list[int], what: str, limit: int) -> None:
    """The layer as a plain tar at ``dest``, its digests checked, within the budget."""
    stored = hashlib.sha256()
    plain = hashlib.sha256()
    with blobs.open(layer.blob) as src:
        head = src.read(4)
        compression = _sniff(head, layer.compression)
        if compression is Compression.ZSTD:
            raise ImageSourceError(
                f"{what}: zstd layers cannot be read yet; convert the image with "
                "skopeo copy --dest-compress-format gzip"
            )
        hashed = _Hashing(head, src, stored)
        readable = cast("IO[bytes]", hashed)
        stream = gzip.GzipFile(fileobj=readable, mode="rb") if compression is Compression.GZIP else readable
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            try:
                while chunk := stream.read(CHUNK):
                    budget[0] -= len(chunk)
                    if budget[0] < 0:
                        raise HostileLayer(f"{what}: unpacks to more than {limit_text(limit)} (--max-unpacked-size)")
                    plain.update(chunk)
                    out.write(chunk)
            except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise
                raise ImageSourceError(f"{what}: truncated or corrupt ({exc})") from None
        while hashed.read(CHUNK):  # whatever gzip left unread still counts for the digest
            pass
    if layer.digest is not None and f"sha256:{stored.hexdigest()}" != layer.digest:
        raise ImageSourceError(f"{what}: the blob's sha256 is not the digest {layer.digest} that names it; refused")
    if f"sha256:{plain.hexdigest()}" != layer.diff_id:
        raise ImageSourceError(f"{what}: the unpacked layer's sha256 is not the config's diff_id; refused")


def _sniff(head: bytes, declared: Compression) -> Compression:
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE if declared is not Compression.ZSTD else declared


class _Hashing:
    """A read-only stream that hashes what is read (``head`` already read first)."""

    def __init__(self, head: bytes, src: IO[bytes], digest: hashlib._Hash) -> None:
        self._head = head
        self._src = src
        self._digest = digest
        digest.update(head)

    def read(self, size: int = -1) -> bytes:
        if self._head:
            cut = len(self._head) if size < 0 else size
            data, self._head = self._head[:cut], self._head[cut:]
            return data
        data = self._src.read(size if size >= 0 else CHUNK)
        self._digest.update(data)
        return data

    def readable(self) -> bool:
        return True


class Capped:
    """A file for tarfile that refuses a single huge read (a PAX header declaring
    gigabytes would otherwise be read into memory whole)."""

    def __init__(self, raw: IO[bytes], what: str) -> None:
        self._raw = raw
        self._what = what

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_READ:
            raise HostileLayer(f"{self._what}: a tar header declares {size} bytes of metadata; refused")
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def seekable(self) -> bool:
        return True  # the plain tar on disk: a sparse member's extents are read where they lie

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()


def limit_text(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"
