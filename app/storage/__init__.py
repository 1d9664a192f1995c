"""Content-addressed blob stores behind one interface, chosen by ``BLOB_STORE_URL`` (§3).

``file:///path`` keeps blobs on the local disk; ``s3://bucket/prefix`` in any S3-compatible store
through boto3. Keys derive from the digest (``sha256/ab/<hex>``), so the same bytes are one blob.

Uploads stream into a private temporary object while they are hashed and only then move under
their digest key, so a cut-off, oversized or mismatching upload never leaves anything under a
digest key; memory stays bounded by one chunk whatever the size.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG
from typing import IO, Any
from urllib.parse import unquote, urlsplit

UPLOAD_CHUNK = 1024 * 1024  # read size of an upload body
READ_CHUNK = 4 * 1024 * 1024  # read size of a download or a checksum pass
S3_PART = 16 * 1024 * 1024  # multipart part size (S3 allows 10,000 parts: up to 160 GiB)
INCOMING = ".incoming"


class StorageError(Exception):
    """The store failed or could not be reached (worth retrying)."""


class TooLargeError(Exception):
    """The upload went past the size cap; nothing was kept."""


class UploadInterruptedError(Exception):
    """Reading the upload's body failed before its end (the client went away); nothing was
    kept. Not a store failure: the store is fine, the bytes never all arrived."""


class ChecksumMismatchError(Exception):
    """The upload's SHA-256 is not the one the client announced; nothing was kept."""

    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


@dataclasses.dataclass(frozen=True)
class PutResult:
    hex_digest: str
    size: int
    created: bool  # False: those bytes were already stored
    uri: str


def _read_hashing(
    stream: IO[bytes], max_bytes: int | None, sink: Any, expected_size: int | None = None
) -> tuple[str, int]:
    """Copy ``stream`` into ``sink(chunk)`` while hashing; returns (hex sha256, size).

    An ``OSError`` from the stream (a reset connection) becomes ``UploadInterruptedError`` so
    that callers never mistake the client's failure for the store's (``StorageError``)."""
    digest = hashlib.sha256()
    size = 0
    while True:
        try:
            chunk = stream.read(UPLOAD_CHUNK)
        except OSError as exc:
            raise UploadInterruptedError(str(exc) or exc.__class__.__name__) from exc
        if not chunk:
            break
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise TooLargeError(size)
        digest.update(chunk)
        sink(chunk)
    if expected_size is not None and size != expected_size:
        # Some servers (gunicorn) end the body quietly when the client goes away mid-upload.
        raise UploadInterruptedError(f"the body ended after {size} of {expected_size} bytes")
    return digest.hexdigest(), size


def digest_key(hex_digest: str) -> str:
    return f"sha256/{hex_digest[:2]}/{hex_digest}"


def _is_temporary(key: str) -> bool:
    """Whether ``key`` is one no URI may name: an upload in progress, or one holding control
    characters (a NUL cannot even be a file name)."""
    return (
        key == INCOMING
        or key.startswith(INCOMING + "/")
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
    )


class BlobStore(abc.ABC):
    """What the registry needs of a blob store; each implementation is a real store."""

    url: str

    @abc.abstractmethod
    def uri_for(self, key: str) -> str:
        """The ``storage.uri`` of a key in this store."""

    @abc.abstractmethod
    def key_for_uri(self, uri: str) -> str | None:
        """The key a URI names inside this store, or None when it points elsewhere."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def put(
        self,
        stream: IO[bytes],
        *,
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
        expected_size: int | None = None,
    ) -> PutResult:
        """Store the bytes of ``stream`` under their digest key (see the module docstring).

        Raises ``TooLargeError`` past ``max_bytes``, ``ChecksumMismatchError`` when the digest
        is not ``expected_sha256``, ``UploadInterruptedError`` when the stream fails or ends
        before ``expected_size`` bytes (a ``Content-Length``), ``StorageError`` when the store
        fails; in each case nothing is kept."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Size of the object under ``key``, None when there is none."""

    @abc.abstractmethod
    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The object's bytes from ``start`` (``length`` of them, default all), in chunks."""

    def presign(self, key: str, expires: int = 3600) -> str | None:
        """A URL a client can fetch the object from directly, when the store has such URLs."""
        return None

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key`` (no error if it is gone)."""


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        # Resolved at every call (an lstat per component, ~30 us), never remembered: a path
        # that was inside the store may since lead out of it through a symlink.
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"key {key!r} escapes the store")
        return path

    def uri_for(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def key_for_uri(self, uri: str) -> str | None:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return None
        path = Path(posixpath.normpath(unquote(parts.path)))
        if not path.is_relative_to(self.root) or path == self.root:
            return None
        key = path.relative_to(self.root).as_posix()
        return None if _is_temporary(key) else key

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def put(
        self,
        stream: IO[bytes],
        *,
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
        expected_size: int | None = None,
    ) -> PutResult:
        incoming = self.root / INCOMING
        try:
            incoming.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=incoming, prefix="upload-")
        except OSError as exc:
            raise StorageError(f"cannot write under {self.root}: {exc}") from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                hex_digest, size = _read_hashing(stream, max_bytes, fh.write, expected_size)
                fh.flush()
                os.fsync(fh.fileno())
            if expected_sha256 is not None and expected_sha256 != hex_digest:
                raise ChecksumMismatchError(hex_digest)
            key = digest_key(hex_digest)
            final = self._path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)  # atomic, and refuses to replace: the first copy wins
                created = True
            except FileExistsError:
                created = False
            return PutResult(hex_digest, size, created, self.uri_for(key))
        except OSError as exc:
            raise StorageError(f"cannot write under {self.root}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def size(self, key: str) -> int | None:
        try:
            stat = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: not a path here
            return None
        except OSError as exc:
            raise StorageError(str(exc)) from exc
        if not S_ISREG(stat.st_mode):
            return None  # a directory of the store's layout is no object
        return stat.st_size

    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        return self._chunks(fh, start, length)

    @staticmethod
    def _chunks(fh: IO[bytes], start: int, length: int | None) -> Iterator[bytes]:
        with fh:
            fh.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = fh.read(want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


class S3BlobStore(BlobStore):
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if self.endpoint_url else None,
                signature_version="s3v4",
            )
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def key_for_uri(self, uri: str) -> str | None:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or parts.netloc != self.bucket:
            return None
        object_key = parts.path.lstrip("/")
        if posixpath.normpath(object_key) != object_key:
            return None  # "..", "//" or "./" could alias another key
        if self.prefix:
            if not object_key.startswith(self.prefix + "/"):
                return None
            object_key = object_key[len(self.prefix) + 1 :]
        if not object_key or _is_temporary(object_key):
            return None
        return object_key

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"S3 head of {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 unreachable: {exc}") from exc
        return int(head["ContentLength"])

    def put(
        self,
        stream: IO[bytes],
        *,
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
        expected_size: int | None = None,
    ) -> PutResult:
        from botocore.exceptions import BotoCoreError, ClientError

        tmp_key = self._object_key(f"{INCOMING}/{uuid.uuid4().hex}")
        upload = _MultipartUpload(self.client, self.bucket, tmp_key)
        try:
            hex_digest, size = _read_hashing(stream, max_bytes, upload.write, expected_size)
            if expected_sha256 is not None and expected_sha256 != hex_digest:
                raise ChecksumMismatchError(hex_digest)  # before completing: nothing to delete
            upload.complete()
            key = digest_key(hex_digest)
            created = not self.exists(key)
            if created:
                self.client.copy(
                    {"Bucket": self.bucket, "Key": tmp_key}, self.bucket, self._object_key(key)
                )
            return PutResult(hex_digest, size, created, self.uri_for(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 upload failed: {exc}") from exc
        finally:
            upload.discard()

    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        if length == 0:
            return iter(())  # "bytes=N-(N-1)" is no range: S3 would send everything
        extra: dict[str, str] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            extra["Range"] = f"bytes={start}-{end}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key), **extra)[
                "Body"
            ]
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 read of {key}: {exc}") from exc
        return self._chunks(body)

    @staticmethod
    def _chunks(body: Any) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        try:
            yield from body.iter_chunks(READ_CHUNK)
        except BotoCoreError as exc:
            raise StorageError(f"S3 read interrupted: {exc}") from exc
        finally:
            body.close()

    def presign(self, key: str, expires: int = 3600) -> str | None:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=expires,
        )
        return url

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 delete of {key}: {exc}") from exc


class _MultipartUpload:
    """Buffers one part at a time (bounded memory); a body smaller than one part is a single
    PUT. ``discard`` removes whatever was written under the temporary key."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.written = False

    def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) >= S3_PART:
            self._flush_part()

    def _flush_part(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)[
                "UploadId"
            ]
        number = len(self.parts) + 1
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=self.buffer,  # no copy: the call returns before the buffer is reused
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self.buffer.clear()

    def complete(self) -> None:
        if self.upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
        else:
            if self.buffer:
                self._flush_part()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
            self.upload_id = None
        self.buffer.clear()
        self.written = True

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self.upload_id is not None:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )
            if self.written:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)


def blob_store_from_url(url: str, endpoint_url: str | None = None) -> BlobStore:
    """The store a ``BLOB_STORE_URL`` names; ``ValueError`` for an unsupported scheme."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalBlobStore(unquote(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        return S3BlobStore(parts.netloc, parts.path, endpoint_url)
    raise ValueError(f"BLOB_STORE_URL must be file:///path or s3://bucket/prefix, got {url!r}")
