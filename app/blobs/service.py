"""Blobs: streamed uploads into the content-addressed store, streamed reads, and the
``checksum`` step of the registration pipeline (CONTRACT.md §3, §5)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from flask import current_app

from app.assets.errors import AssetNotFoundError
from app.assets.models import Asset
from app.blobs.errors import BlobNotFoundError, RangeNotSatisfiableError
from app.blobs.models import Blob
from app.db import insert_ignoring_conflicts, utcnow
from app.errors import (
    InvalidInputError,
    PayloadTooLargeError,
    UnavailableError,
    ValidationFailedError,
)
from app.extensions import db
from app.jobs.pipeline import JobContext, StepResult, StorageUnavailableError
from app.storage import (
    BlobStore,
    ChecksumMismatchError,
    StorageError,
    TooLargeError,
    UploadInterruptedError,
    digest_key,
)

log = logging.getLogger(__name__)

HEX = frozenset("0123456789abcdef")


def parse_digest(text: str) -> str:
    """``sha256:<64 hex>`` -> the hex; 400 for anything else."""
    algorithm, _, hex_digest = text.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64 or not set(hex_digest) <= HEX:
        raise InvalidInputError("a blob digest looks like sha256:<64 lower-case hex digits>")
    return hex_digest


def _store() -> BlobStore:
    store: BlobStore = current_app.extensions["blob_store"]
    return store


def upload_blob(
    stream: IO[bytes],
    *,
    expected_sha256: str | None,
    max_bytes: int,
    actor: str,
    content_length: int | None = None,
    verify_body: Callable[[str], None] | None = None,
) -> tuple[Blob, bool]:
    """Stream ``stream`` into the store while hashing it; returns the blob and whether it is new.

    Called by ``POST /v1/blobs``. Memory stays bounded whatever the size. Nothing is kept when
    the body is cut off or shorter than ``content_length`` (400), exceeds ``max_bytes`` (413,
    before reading anything when ``content_length`` says so) or does not match
    ``expected_sha256`` (422). The same bytes twice are one blob (the second upload returns
    ``created=False``), also when two uploads of them race. Commits the blob's row.
    ``verify_body(hex_sha256)`` (a request signature) runs when the body has ended; if it
    raises, bytes this upload stored are deleted again and the error propagates.
    """
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.strip().lower()
        if len(expected_sha256) != 64 or not set(expected_sha256) <= HEX:
            raise ValidationFailedError(
                {"X-Checksum-SHA256": ["must be the 64 hex digits of the body's SHA-256"]}
            )
    if content_length is not None and content_length > max_bytes:
        raise PayloadTooLargeError(f"a blob may hold at most {max_bytes} bytes")
    # End the request's transaction before the (possibly hours-long) upload: on SQLite it
    # holds the database's write lock (BEGIN IMMEDIATE), which would stall every other writer.
    db.session.commit()
    try:
        result = _store().put(
            stream,
            expected_sha256=expected_sha256,
            max_bytes=max_bytes,
            expected_size=content_length,
        )
    except UploadInterruptedError as exc:
        raise InvalidInputError(f"the upload was cut off ({exc}); nothing was kept") from None
    except TooLargeError:
        raise PayloadTooLargeError(f"a blob may hold at most {max_bytes} bytes") from None
    except ChecksumMismatchError as exc:
        raise ValidationFailedError(
            {"X-Checksum-SHA256": [f"the body's SHA-256 is {exc.actual}, not {expected_sha256}"]}
        ) from None
    except StorageError as exc:
        raise UnavailableError(f"the blob store is unavailable: {exc}") from None
    if verify_body is not None:
        try:
            verify_body(result.hex_digest)
        except Exception:
            if result.created:
                _store().delete(digest_key(result.hex_digest))
            raise
    digest = f"sha256:{result.hex_digest}"
    session = db.session
    # Two uploads of the same bytes may race here: the row is claimed, never inserted twice.
    insert_ignoring_conflicts(
        session,
        Blob,
        ["digest"],
        digest=digest,
        size_bytes=result.size,
        uri=result.uri,
        created_by=actor,
        created_at=utcnow(),
    )
    session.commit()
    blob = session.get(Blob, digest, populate_existing=True)
    assert blob is not None  # claimed above, and blob rows are never deleted
    return blob, result.created


@dataclasses.dataclass(frozen=True)
class BlobRead:
    """What to send for a blob read: 304, a redirect, or headers and a lazy body."""

    hex_digest: str | None
    size: int
    start: int
    length: int
    partial: bool
    etag: str
    body: Iterator[bytes] | None
    redirect: str | None = None
    not_modified: bool = False


_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) for one ``bytes=`` range; None to send everything. RFC 9110 §14: a
    header we cannot parse, or several ranges, is ignored; one that misses the body is 416."""
    match = _BYTE_RANGE.fullmatch(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiableError(
                "an empty suffix range selects nothing",
                headers={"Content-Range": f"bytes */{size}"},
            )
        if size == 0:
            return None  # the last N bytes of nothing: the whole, empty, body
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid, so ignored (RFC 9110 §14.1.1)
    if start >= size:
        raise RangeNotSatisfiableError(
            f"the range starts past the end ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )
    end = min(end, size - 1)
    return start, end - start + 1


def read_blob(
    key: str,
    *,
    etag: str,
    hex_digest: str | None,
    range_header: str | None,
    head: bool,
    redirect: bool,
    cached: Callable[[str], bool] = lambda _etag: False,
) -> BlobRead:
    """Prepare a streamed read of ``key``: ``BlobNotFoundError`` if absent; else, in the order of
    RFC 9110 §13.2.2, a 304 when ``cached(etag)`` (the client's ``If-None-Match`` matches), a
    redirect when asked for and the store presigns, 416 for a range past the end, or the bytes
    (a lazy body, not opened for ``head``)."""
    store = _store()
    try:
        size = store.size(key)
        if size is None:
            raise BlobNotFoundError(etag.strip('"'))
        if cached(etag):
            return BlobRead(hex_digest, size, 0, size, False, etag, None, not_modified=True)
        if redirect:
            url = store.presign(key)
            if url is not None:
                return BlobRead(hex_digest, size, 0, size, False, etag, None, redirect=url)
        wanted = _byte_range(range_header, size)
        start, length = wanted if wanted else (0, size)
        body = None
        if not head:
            body = store.open(key, start=start, length=length if wanted else None)
    except StorageError as exc:
        raise UnavailableError(f"the blob store is unavailable: {exc}") from None
    return BlobRead(hex_digest, size, start, length, wanted is not None, etag, body)


def read_digest(
    digest: str,
    range_header: str | None,
    *,
    head: bool,
    redirect: bool,
    cached: Callable[[str], bool] = lambda _etag: False,
) -> BlobRead:
    """``GET``/``HEAD /v1/blobs/{digest}``: 400 for a malformed digest, 404 for an unknown one."""
    hex_digest = parse_digest(digest)
    return read_blob(
        digest_key(hex_digest),
        etag=f'"sha256:{hex_digest}"',
        hex_digest=hex_digest,
        range_header=range_header,
        head=head,
        redirect=redirect,
        cached=cached,
    )


def content_key(asset: Asset) -> str | None:
    """The store key of an asset's content, or None for a metadata-only asset."""
    if asset.storage_uri:
        return _store().key_for_uri(asset.storage_uri)
    if asset.checksum_algorithm == "SHA256" and asset.checksum_value:
        return digest_key(asset.checksum_value)
    return None


def content_size(asset: Asset, context: JobContext) -> int | None:
    """The size of the asset's content in the store, None when there is no object under its key
    (or no key): asked once per run of a job (deciding whether its steps may take long, then
    the checksum step). A store that fails raises ``StorageError`` and nothing is remembered."""
    if "content_size" not in context.memo:
        key = content_key(asset)
        context.memo["content_size"] = _store().size(key) if key else None
    size: int | None = context.memo["content_size"]
    return size


def read_asset_content(
    asset_id: str,
    range_header: str | None,
    *,
    head: bool,
    redirect: bool,
    cached: Callable[[str], bool] = lambda _etag: False,
) -> BlobRead:
    """``GET /v1/assets/{id}/content``: 404 for a metadata-only asset or missing bytes."""
    asset = db.session.get(Asset, asset_id)
    if asset is None or asset.deleted_at is not None:
        raise AssetNotFoundError(asset_id)
    key = content_key(asset)
    if key is None:
        raise AssetNotFoundError(f"{asset_id} content (it is metadata-only)")
    algorithm = (asset.checksum_algorithm or "").lower()
    hex_digest = asset.checksum_value if algorithm == "sha256" else None
    return read_blob(
        key,
        etag=f'"{algorithm}:{asset.checksum_value}"',
        hex_digest=hex_digest,
        range_header=range_header,
        head=head,
        redirect=redirect,
        cached=cached,
    )


# ---- the checksum step -----------------------------------------------------------------------


def new_hasher(algorithm: str) -> Any:
    if algorithm == "SHA256":
        return hashlib.sha256()
    if algorithm == "SHA3_256":
        return hashlib.sha3_256()
    if algorithm == "BLAKE3":
        import blake3

        return blake3.blake3(max_threads=1)
    raise ValueError(f"unknown checksum algorithm {algorithm}")


def _mismatch(message: str, event: dict[str, Any]) -> StepResult:
    return StepResult("failed", message, "CHECKSUM_MISMATCH", events=(("checksum_failed", event),))


def verify_content_step(asset: Asset, context: JobContext) -> StepResult:
    """The ``checksum`` step: stream the content from the store, recompute the declared digest
    and compare. Never holds the blob in memory; renews the job's lease while it reads."""
    if asset.checksum_algorithm is None or asset.checksum_value is None:
        return StepResult("skipped", "metadata-only asset: there is no content to verify")
    store = _store()
    key = content_key(asset)
    uri = asset.storage_uri or (store.uri_for(key) if key else "")
    if key is None:
        return StepResult(
            "failed", f"{uri} is not inside the blob store {store.url}", "BLOB_NOT_FOUND"
        )
    try:
        size = content_size(asset, context)
        if size is None:
            return StepResult(
                "failed",
                f"no object at {uri}: upload the bytes (POST /v1/blobs) or fix storage.uri, "
                "then register a new version",
                "BLOB_NOT_FOUND",
            )
        hasher = new_hasher(asset.checksum_algorithm)
        started, seen = time.monotonic(), 0
        for chunk in store.open(key):
            hasher.update(chunk)
            seen += len(chunk)
            context.heartbeat()
    except StorageError as exc:
        raise StorageUnavailableError(str(exc)) from exc
    seconds = max(time.monotonic() - started, 1e-9)
    actual = hasher.hexdigest()
    label = asset.checksum_algorithm
    if actual != asset.checksum_value:
        return _mismatch(
            f"declared {label} {asset.checksum_value} but the content at {uri} has "
            f"{actual}: register a new version with the right checksum or bytes",
            {"algorithm": label, "expected": asset.checksum_value, "actual": actual},
        )
    if asset.size_bytes is not None and asset.size_bytes != seen:
        return _mismatch(
            f"declared size_bytes {asset.size_bytes} but the content has {seen} bytes",
            {"algorithm": label, "expected_size": asset.size_bytes, "actual_size": seen},
        )
    if asset.size_bytes is None:
        asset.size_bytes = seen
    rate = seen / seconds / 1e6
    return StepResult(
        "passed",
        f"{label} matches ({seen} bytes read in {seconds:.2f} s, {rate:.0f} MB/s)",
        events=(("checksum_verified", {"algorithm": label, "value": actual, "size_bytes": seen}),),
    )
