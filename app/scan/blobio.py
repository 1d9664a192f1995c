"""Bounded ways to read a blob for the scan: a sequential reader over a byte range, and a
seekable file (for zip archives and pickles) that fetches ranges from any ``BlobStore``.

Neither ever holds more than one store chunk (4 MiB) plus what the caller asked for, and both
call ``heartbeat`` as they go so a long read keeps the job's lease.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import IO, Any

from app.storage import READ_CHUNK, BlobStore, LocalBlobStore

Heartbeat = Callable[[], None]


def _noop() -> None:
    return None


class TruncatedError(Exception):
    """The bytes ended before the structure being read did."""


class LimitError(Exception):
    """Reading further would go past the scan's bound for this structure."""


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()  # an S3 body is released at once, not when the generator is collected


def read_range(
    store: BlobStore, key: str, start: int, length: int, heartbeat: Heartbeat = _noop
) -> bytes:
    """``length`` bytes from ``start`` (fewer at the end of the blob); the caller bounds
    ``length``."""
    out = bytearray()
    chunks = store.open(key, start, length)
    try:
        for chunk in chunks:
            heartbeat()
            out += chunk[: length - len(out)]
            if len(out) >= length:
                break
    finally:
        _close(chunks)
    return bytes(out)


class RangeReader:
    """Reads a blob front to back from ``start``, never past ``start + limit``: what a header
    parser needs (``read``, ``skip``), with ``LimitError`` past the bound and
    ``TruncatedError`` past the end of the blob."""

    def __init__(
        self,
        store: BlobStore,
        key: str,
        *,
        start: int,
        limit: int,
        size: int,
        heartbeat: Heartbeat = _noop,
    ) -> None:
        self._chunks = store.open(key, start, min(limit, max(size - start, 0)))
        self._limit = limit
        self._available = max(size - start, 0)
        self._heartbeat = heartbeat
        self._buf = b""
        self._pos = 0  # inside _buf
        self.offset = 0  # bytes consumed since start

    def _check(self, n: int) -> None:
        if n < 0:
            raise ValueError(n)
        if self.offset + n > self._available:
            raise TruncatedError(f"needs {self.offset + n} bytes, the blob has {self._available}")
        if self.offset + n > self._limit:
            raise LimitError(self._limit)

    def _fill(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise TruncatedError("the blob ended early")
        self._heartbeat()
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0

    def read(self, n: int) -> bytes:
        self._check(n)
        while len(self._buf) - self._pos < n:
            self._fill()
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        self.offset += n
        return data

    def skip(self, n: int) -> None:
        self._check(n)
        remaining = n
        while remaining:
            if self._pos >= len(self._buf):
                self._fill()
            step = min(remaining, len(self._buf) - self._pos)
            self._pos += step
            remaining -= step
        self.offset += n

    def close(self) -> None:
        _close(self._chunks)


class _BlobRawFile(io.RawIOBase):
    """A read-only, seekable file over a blob: each read fetches one range from the store."""

    def __init__(self, store: BlobStore, key: str, size: int, heartbeat: Heartbeat) -> None:
        super().__init__()
        self._store, self._key, self._size = store, key, size
        self._heartbeat = heartbeat
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        data = read_range(self._store, self._key, self._pos, want, self._heartbeat)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextlib.contextmanager
def open_seekable(
    store: BlobStore, key: str, size: int, heartbeat: Heartbeat = _noop
) -> Iterator[IO[bytes]]:
    """A seekable binary file over the blob. A local store's file is opened directly (an
    optimisation only); any other store is read in ranged requests through a 4 MiB buffer,
    so nothing is copied to disk and only the parts a parser touches are fetched."""
    if isinstance(store, LocalBlobStore):
        with store._path(key).open("rb") as fh:
            yield fh
        return
    raw = _BlobRawFile(store, key, size, heartbeat)
    with io.BufferedReader(raw, buffer_size=READ_CHUNK) as fh:
        yield fh
