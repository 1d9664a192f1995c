"""Content-addressed blob stores behind one interface, chosen by ``BLOB_STORE_URL`` (§3).

``file:///path`` keeps blobs on the local disk; ``s3://bucket/prefix`` in any S3-compatible store
through boto3. Keys derive from the digest (``sha256/ab/<hex>``), so the same bytes are one blob.
"""

from __future__ import annotations

import abc
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


def digest_key(hex_digest: str) -> str:
    return f"sha256/{hex_digest[:2]}/{hex_digest}"


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


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
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
        return path.relative_to(self.root).as_posix()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


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

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
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
        return object_key or None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True


def blob_store_from_url(url: str, endpoint_url: str | None = None) -> BlobStore:
    """The store a ``BLOB_STORE_URL`` names; ``ValueError`` for an unsupported scheme."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalBlobStore(unquote(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        return S3BlobStore(parts.netloc, parts.path, endpoint_url)
    raise ValueError(f"BLOB_STORE_URL must be file:///path or s3://bucket/prefix, got {url!r}")
