"""Layer compression on every core, the same bytes whatever the number of cores.

gzip: the tar is cut into blocks of ``BLOCK`` bytes, each deflated on its own (with the
32 KB before it as its dictionary, so that matches reach back as in one stream) and
ended with a sync flush, the last one with the final block; the raw deflate streams
are joined under one gzip header and trailer (the CRC-32 and size of the whole tar).
This is what pigz writes: one valid gzip member that every gunzip reads. zlib lets go
of the GIL while it deflates, so the blocks are compressed by a pool of threads; what
each block becomes depends only on its bytes, its dictionary and the level, never on
which thread or how many, so the layer is byte for byte reproducible.

zstd (``--compression zstd``, for podman, containerd and Docker 23 and later): the
``zstandard`` package, in its multi-threaded mode, whose output does not depend on the
number of worker threads either.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from minify.errors import MinifyError
from minify.root import worker_pool

if TYPE_CHECKING:
    from concurrent.futures import Future

#: Uncompressed bytes per gzip block (pigz's default is 128 KB; bigger blocks lose less
#: to the flushes and the fresh start of each block).
BLOCK = 1 << 20
WINDOW = 32 << 10
#: The gzip header GzipFile writes with no name and mtime 0 (OS 255: unknown).
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
ZSTD_LEVEL = 3


class Compression(StrEnum):
    """How the layer is stored (``--compression``)."""

    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_suffix(self) -> str:
        return "+" + self.value


def _deflate(block: bytes, dictionary: bytes, level: int, final: bool) -> bytes:
    """One block as raw deflate data, ending byte-aligned (sync flush) unless final."""
    if dictionary:
        engine = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary)
    else:
        engine = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    return engine.compress(block) + engine.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


class ParallelGzip(io.RawIOBase):
    """A write-only stream: the gzip of what is written, to ``sink``, in order."""

    def __init__(self, sink: Writable, level: int) -> None:
        self.sink, self.level = sink, level
        self.buffer = bytearray()
        self.tail = b""  # the last WINDOW bytes before the buffer: the next dictionary
        self.crc = 0
        self.size = 0
        self.pending: deque[Future[bytes]] = deque()
        self.ahead = 2 * (os.cpu_count() or 1)  # blocks in flight, bounding memory
        sink.write(GZIP_HEADER)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        self.buffer += view
        while len(self.buffer) >= BLOCK:
            block = bytes(self.buffer[:BLOCK])
            del self.buffer[:BLOCK]
            self._submit(block, final=False)
        return len(view)

    def _submit(self, block: bytes, *, final: bool) -> None:
        self.pending.append(worker_pool().submit(_deflate, block, self.tail, self.level, final))
        self.tail = (self.tail + block)[-WINDOW:]
        while self.pending and (self.pending[0].done() or len(self.pending) > self.ahead):
            self.sink.write(self.pending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        self._submit(bytes(self.buffer), final=True)
        self.buffer.clear()
        while self.pending:
            self.sink.write(self.pending.popleft().result())
        self.sink.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        super().close()


class Writable(Protocol):
    def write(self, data: Any, /) -> int: ...


def compressor(kind: Compression, sink: Writable, level: int) -> tuple[Writable, Callable[[], None]]:
    """A stream that compresses into ``sink``, and what finishes it."""
    if kind is Compression.GZIP:
        stream = ParallelGzip(sink, level)
        return stream, stream.close
    try:
        import zstandard
    except ImportError:
        raise MinifyError("--compression zstd needs the zstandard package: pip install 'minify[zstd]'") from None
    engine = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=max(1, os.cpu_count() or 1), write_checksum=True)
    writer = engine.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
    return writer, writer.close
