"""Moving bytes: hashing files, pacing transfers, and writing a download so that only a verified
file ever appears under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from llmreg.errors import ChecksumMismatchError

CHUNK = 1024 * 1024

# (bytes done, total bytes or None when unknown)
Progress = Callable[[int, int | None], None]


def sha256_file(path: str | os.PathLike[str], progress: Progress | None = None) -> str:
    """Hex SHA-256 of a file, read in chunks (memory stays at one chunk)."""
    digest = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


class Pacer:
    """Keeps a transfer at or under ``rate`` bytes per second (curl's ``--limit-rate``)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.started = time.monotonic()
        self.done = 0

    def chunk_size(self, default: int = CHUNK) -> int:
        # Small enough to be paced smoothly: about a tenth of a second's worth.
        return default if self.rate is None else max(1024, min(default, int(self.rate / 10)))

    def account(self, size: int) -> None:
        self.done += size
        if self.rate is None:
            return
        ahead = self.done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def file_chunks(
    path: str | os.PathLike[str],
    progress: Progress | None = None,
    rate: float | None = None,
) -> Iterator[bytes]:
    """A file as an upload body, chunk by chunk, reporting progress as it goes out."""
    total = os.path.getsize(path)
    pacer = Pacer(rate)
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(pacer.chunk_size()):
            yield chunk
            done += len(chunk)
            pacer.account(len(chunk))
            if progress:
                progress(done, total)


def part_path(dest: Path) -> Path:
    """Where a download is written until it is verified: ``DEST.part`` beside ``DEST`` (same
    folder, so the final rename is atomic)."""
    return dest.with_name(dest.name + ".part")


def write_verified(
    chunks: Iterable[bytes],
    dest: Path,
    expected_sha256: str,
    *,
    total: int | None = None,
    progress: Progress | None = None,
    rate: float | None = None,
) -> Path:
    """Write ``chunks`` to ``DEST.part`` while hashing them, then rename it to ``dest`` only if
    the SHA-256 is ``expected_sha256``.

    Whatever happens before that rename (a mismatch, a broken connection, Ctrl-C), the part
    file is removed and ``dest`` is left as it was: never a partial or corrupt file under the
    final name. A process killed outright (SIGKILL) can leave ``DEST.part``; the next download
    to ``dest`` truncates it and starts from zero, never resuming from unverified bytes.
    """
    part = part_path(dest)
    digest = hashlib.sha256()
    pacer = Pacer(rate)
    done = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
                pacer.account(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        actual = digest.hexdigest()
        if actual != expected_sha256.lower():
            raise ChecksumMismatchError(expected_sha256.lower(), actual, str(dest))
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise
    return dest
