"""The blob stores behind ``BLOB_STORE_URL`` (CONTRACT.md §3): LocalBlobStore on disk and
S3BlobStore over HTTP against moto's S3 server. Both must keep content-addressed keys, dedup,
ranged reads, URI mapping, and leave nothing behind when an upload fails or is cut off, with
memory bounded whatever the size."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.exceptions import ClientDisconnected

from app.storage import (
    INCOMING,
    S3_PART,
    UPLOAD_CHUNK,
    BlobStore,
    ChecksumMismatchError,
    LocalBlobStore,
    S3BlobStore,
    TooLargeError,
    UploadInterruptedError,
    blob_store_from_url,
    digest_key,
)

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int = 100) -> bytes:
    """Bytes no other test stores (so a first put really is the first)."""
    seed = uuid.uuid4().bytes
    return (seed * (size // len(seed) + 1))[:size]


class ZeroStream(io.RawIOBase):
    """``size`` zero bytes produced on demand (never held whole); records every read size."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.reads: list[int | None] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads.append(n)
        if n is None or n < 0:
            n = self.remaining
        n = min(n, self.remaining)
        self.remaining -= n
        return bytes(n)


class CutOff(io.RawIOBase):
    """Yields ``good`` bytes, then the client goes away: ``read`` raises ``error``."""

    def __init__(self, good: bytes, error: BaseException, chunk: int = 1000) -> None:
        self.data = io.BytesIO(good)
        self.error = error
        self.chunk = chunk

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        chunk = self.data.read(min(self.chunk, n if n and n > 0 else self.chunk))
        if not chunk:
            raise self.error
        return chunk


# ---- stores under test ------------------------------------------------------------------------


def s3_keys(store: S3BlobStore) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def s3_pending_uploads(store: S3BlobStore) -> list[str]:
    listing = store.client.list_multipart_uploads(Bucket=store.bucket)
    return [item["Key"] for item in listing.get("Uploads", [])]


def stored_keys(store: BlobStore) -> list[str]:
    """Every object in the store, as keys relative to it (temporary ones included)."""
    if isinstance(store, LocalBlobStore):
        return sorted(
            p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()
        )
    assert isinstance(store, S3BlobStore)
    prefix = store.prefix + "/" if store.prefix else ""
    keys = s3_keys(store)
    assert all(k.startswith(prefix) for k in keys), keys
    return [k[len(prefix) :] for k in keys]


def assert_nothing_left(store: BlobStore) -> None:
    assert stored_keys(store) == []
    if isinstance(store, LocalBlobStore):
        incoming = store.root / INCOMING
        assert not incoming.exists() or list(incoming.iterdir()) == []
    else:
        assert isinstance(store, S3BlobStore)
        assert s3_pending_uploads(store) == []


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def s3_store(s3_endpoint: str, s3_bucket: str) -> S3BlobStore:
    return S3BlobStore(s3_bucket, "blobs", endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> BlobStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


# ---- put ---------------------------------------------------------------------------------------


def test_put_stores_under_the_digest_key_and_reports_it(store):
    data = payload(5000)
    result = store.put(io.BytesIO(data))
    assert result.hex_digest == sha(data)
    assert result.size == 5000
    assert result.created is True
    key = digest_key(sha(data))
    assert key == f"sha256/{sha(data)[:2]}/{sha(data)}"
    assert result.uri == store.uri_for(key)
    assert store.key_for_uri(result.uri) == key
    assert stored_keys(store) == [key]
    assert store.exists(key)
    assert store.size(key) == 5000
    assert b"".join(store.open(key)) == data


def test_put_of_the_same_bytes_again_is_a_no_op(store):
    data = payload(300)
    first = store.put(io.BytesIO(data))
    second = store.put(io.BytesIO(data))
    assert (first.created, second.created) == (True, False)
    assert second.hex_digest == first.hex_digest and second.uri == first.uri
    assert second.size == 300
    assert stored_keys(store) == [digest_key(first.hex_digest)]


def test_put_of_an_empty_stream_is_the_empty_blob(store):
    result = store.put(io.BytesIO(b""))
    assert result.hex_digest == sha(b"")
    assert result.size == 0 and result.created
    key = digest_key(sha(b""))
    assert store.size(key) == 0
    assert b"".join(store.open(key)) == b""
    assert b"".join(store.open(key, 0, 0)) == b""
    assert stored_keys(store) == [key]


def test_put_with_the_right_expected_digest_stores(store):
    data = payload(64)
    assert store.put(io.BytesIO(data), expected_sha256=sha(data)).created
    assert stored_keys(store) == [digest_key(sha(data))]


def test_put_with_a_wrong_expected_digest_keeps_nothing(store):
    data = payload(64)
    with pytest.raises(ChecksumMismatchError) as caught:
        store.put(io.BytesIO(data), expected_sha256="0" * 64)
    assert caught.value.actual == sha(data)
    assert_nothing_left(store)


def test_put_with_a_wrong_expected_digest_keeps_nothing_multipart(s3_store):
    with pytest.raises(ChecksumMismatchError):
        s3_store.put(ZeroStream(S3_PART + 10), expected_sha256="0" * 64)
    assert_nothing_left(s3_store)


@pytest.mark.parametrize("size", [1001, 5000])
def test_put_over_the_cap_keeps_nothing(store, size):
    with pytest.raises(TooLargeError):
        store.put(io.BytesIO(payload(size)), max_bytes=1000)
    assert_nothing_left(store)


def test_put_at_the_cap_is_accepted(store):
    data = payload(1000)
    assert store.put(io.BytesIO(data), max_bytes=1000).size == 1000


def test_put_over_the_cap_after_parts_were_sent_keeps_nothing(s3_store):
    with pytest.raises(TooLargeError):
        s3_store.put(ZeroStream(S3_PART + UPLOAD_CHUNK * 2), max_bytes=S3_PART + UPLOAD_CHUNK)
    assert_nothing_left(s3_store)


@pytest.mark.parametrize(
    "error", [ConnectionResetError("peer reset"), ClientDisconnected()], ids=["reset", "disconnect"]
)
def test_a_cut_off_upload_leaves_nothing(store, error):
    expected = UploadInterruptedError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected):
        store.put(CutOff(payload(5000), error))
    assert_nothing_left(store)


def test_a_body_ending_before_its_announced_size_leaves_nothing(store):
    data = payload(5000)
    with pytest.raises(UploadInterruptedError, match="3000 of 5000"):
        store.put(io.BytesIO(data[:3000]), expected_size=5000)
    assert_nothing_left(store)
    assert store.put(io.BytesIO(data), expected_size=5000).size == 5000


def test_a_cut_off_multipart_upload_leaves_nothing(s3_store):
    class Cut(ZeroStream):
        def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
            if self.remaining < S3_PART:  # a whole part has gone up already
                raise ConnectionResetError("peer reset")
            return super().read(n)

    stream = Cut(S3_PART * 2)
    with pytest.raises(UploadInterruptedError):
        s3_store.put(stream)
    assert stream.remaining < S3_PART  # the multipart upload really had started
    assert_nothing_left(s3_store)


def test_multipart_put_round_trips(s3_store):
    size = S3_PART + 12345
    data = os.urandom(size)
    result = s3_store.put(io.BytesIO(data))
    assert (result.hex_digest, result.size, result.created) == (sha(data), size, True)
    key = digest_key(sha(data))
    assert stored_keys(s3_store) == [key]
    assert s3_pending_uploads(s3_store) == []
    assert s3_store.size(key) == size
    assert b"".join(s3_store.open(key, S3_PART - 5, 10)) == data[S3_PART - 5 : S3_PART + 5]


def test_put_reads_at_most_one_upload_chunk_at_a_time(store):
    stream = ZeroStream(5 * UPLOAD_CHUNK + 7)
    assert store.put(stream).size == 5 * UPLOAD_CHUNK + 7
    assert stream.reads, "put never read"
    assert all(n is not None and 0 < n <= UPLOAD_CHUNK for n in stream.reads), stream.reads


def test_local_put_of_64_mib_stays_within_bounded_memory(local_store):
    size = 64 * MiB
    tracemalloc.start()
    try:
        result = local_store.put(ZeroStream(size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == size and result.hex_digest == sha(bytes(size))
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


_S3_MEMORY_SCRIPT = """
import io, sys, tracemalloc
from app.storage import S3BlobStore
class Zeros(io.RawIOBase):
    def __init__(self, size): self.remaining = size
    def readable(self): return True
    def read(self, n=-1):
        n = min(self.remaining if n is None or n < 0 else n, self.remaining)
        self.remaining -= n
        return bytes(n)
store = S3BlobStore(sys.argv[1], "blobs", endpoint_url=sys.argv[2])
store.client  # build the client before measuring
tracemalloc.start()
result = store.put(Zeros(int(sys.argv[3])))
print(result.size, result.hex_digest, tracemalloc.get_traced_memory()[1])
"""


def test_s3_put_of_64_mib_stays_within_bounded_memory(s3_endpoint, s3_bucket):
    # In a child process: the moto server lives in this one, and tracemalloc would count the
    # bytes it keeps on the store side.
    size = 64 * MiB
    out = subprocess.run(
        [sys.executable, "-c", _S3_MEMORY_SCRIPT, s3_bucket, s3_endpoint, str(size)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert out.returncode == 0, out.stderr
    stored, hex_digest, peak = out.stdout.split()
    assert (int(stored), hex_digest) == (size, sha(bytes(size)))
    print(f"S3 put peak {int(peak) / MiB:.1f} MiB")
    assert int(peak) < 40 * MiB, f"peak {int(peak) / MiB:.1f} MiB"


def test_two_threads_putting_the_same_bytes_both_succeed_with_one_object(store):
    data = payload(3 * UPLOAD_CHUNK)
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    class Gated(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() == 0:
                barrier.wait(timeout=10)  # both uploads are under way at once
            return super().read(n)

    def run() -> None:
        try:
            results.append(store.put(Gated(data)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == 2
    assert {r.hex_digest for r in results} == {sha(data)}
    assert sorted(r.created for r in results) in ([False, True], [True, True])
    key = digest_key(sha(data))
    assert stored_keys(store) == [key]
    assert b"".join(store.open(key)) == data


def test_local_concurrent_put_creates_exactly_once(local_store):
    # On disk "created" is decided by an atomic link: exactly one of the two wins.
    data = payload(2 * UPLOAD_CHUNK)
    barrier = threading.Barrier(2)
    created: list[bool] = []

    class Gated(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            chunk = super().read(n)
            if not chunk:
                barrier.wait(timeout=10)  # both have hashed everything before either links
            return chunk

    threads = [
        threading.Thread(target=lambda: created.append(local_store.put(Gated(data)).created))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(created) == [False, True]


# ---- size, open, delete, presign -------------------------------------------------------------


def test_size_and_exists_of_a_missing_key(store):
    key = digest_key("0" * 64)
    assert store.size(key) is None
    assert store.exists(key) is False


def test_open_reads_ranges(store):
    data = bytes(range(256)) * 40  # 10240 bytes
    key = digest_key(store.put(io.BytesIO(data)).hex_digest)

    def read(start: int = 0, length: int | None = None) -> bytes:
        return b"".join(store.open(key, start, length))

    assert read() == data
    assert read(0, 10) == data[:10]
    assert read(100) == data[100:]
    assert read(10230, 10) == data[10230:]
    assert read(5000, 1) == data[5000:5001]
    assert read(7, 0) == b""


def test_open_yields_bounded_chunks(local_store):
    from app.storage import READ_CHUNK

    key = digest_key(local_store.put(ZeroStream(READ_CHUNK * 2 + 1)).hex_digest)
    sizes = [len(chunk) for chunk in local_store.open(key)]
    assert sizes == [READ_CHUNK, READ_CHUNK, 1]


def test_delete_removes_and_tolerates_a_missing_key(store):
    data = payload(10)
    key = digest_key(store.put(io.BytesIO(data)).hex_digest)
    store.delete(key)
    assert store.exists(key) is False
    assert stored_keys(store) == []
    store.delete(key)  # gone already: no error
    assert store.put(io.BytesIO(data)).created is True  # and the bytes can come back


def test_local_presign_has_no_urls(local_store):
    key = digest_key(local_store.put(io.BytesIO(b"x")).hex_digest)
    assert local_store.presign(key) is None


def test_s3_presign_is_a_url_that_serves_the_bytes_without_credentials(s3_store):
    data = payload(2000)
    key = digest_key(s3_store.put(io.BytesIO(data)).hex_digest)
    url = s3_store.presign(key, expires=60)
    assert url is not None and url.startswith(s3_store.endpoint_url or "")
    assert "X-Amz-Signature=" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data


def test_local_store_refuses_keys_that_escape_it(local_store):
    for key in ("../outside", "sha256/../../outside", "/etc/passwd", "", "."):
        with pytest.raises(ValueError, match="escapes the store"):
            local_store.uri_for(key)


def test_local_store_refuses_a_symlink_that_leads_out_of_it(local_store, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (local_store.root / "sha256").mkdir(parents=True, exist_ok=True)
    (local_store.root / "sha256" / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes the store"):
        local_store.uri_for("sha256/link")
    assert local_store.size("sha256/link") is None


def test_a_key_that_became_a_symlink_out_of_the_store_is_refused(local_store, tmp_path):
    # A key read once while inside the store, then replaced by a link that leads out of it:
    # no earlier answer is reused.
    key = digest_key(local_store.put(io.BytesIO(b"inside")).hex_digest)
    assert local_store.size(key) == len(b"inside")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret, longer")
    path = local_store.root / key
    path.unlink()
    path.symlink_to(outside)
    assert local_store.size(key) is None
    with pytest.raises(ValueError, match="escapes the store"):
        local_store.uri_for(key)


def test_local_size_of_a_directory_is_none(local_store):
    # A key naming a directory inside the store is no object (and must not read as one).
    local_store.put(io.BytesIO(b"x"))
    assert local_store.size("sha256") is None
    assert local_store.exists("sha256") is False


# ---- key_for_uri -------------------------------------------------------------------------------


def test_local_key_for_uri(local_store):
    root = local_store.root
    key = digest_key("a" * 64)
    assert local_store.key_for_uri(f"file://{root}/{key}") == key
    assert local_store.key_for_uri(f"file://localhost{root}/{key}") == key
    assert local_store.key_for_uri(local_store.uri_for(key)) == key
    outside = [
        f"file://{root.parent}/other/{key}",  # next to the store
        f"file://{root}-evil/{key}",  # a sibling sharing the prefix
        f"file://{root}/../{key}",  # traversal
        f"file://{root}/sha256/../../{key}",
        f"file://{root}/%2e%2e/{key}",  # encoded traversal
        f"file://{root}",  # the root itself
        f"file://{root}/",
        f"file://otherhost{root}/{key}",
        f"s3://bucket/{key}",
        f"http://example.com{root}/{key}",
        f"{root}/{key}",  # no scheme
        f"file://{root}/{INCOMING}/upload-abc",  # a temporary upload is no blob
        "file:///etc/passwd",
    ]
    for uri in outside:
        assert local_store.key_for_uri(uri) is None, uri


def test_s3_key_for_uri(s3_endpoint):
    store = S3BlobStore("bkt", "blobs", endpoint_url=s3_endpoint)
    key = digest_key("b" * 64)
    assert store.url == "s3://bkt/blobs"
    assert store.uri_for(key) == f"s3://bkt/blobs/{key}"
    assert store.key_for_uri(f"s3://bkt/blobs/{key}") == key
    outside = [
        f"s3://other/blobs/{key}",  # another bucket
        f"s3://bkt/other/{key}",  # another prefix
        f"s3://bkt/blobsx/{key}",  # a prefix sharing the start
        f"s3://bkt/{key}",
        f"s3://bkt/blobs/../other/{key}",  # traversal
        f"s3://bkt/blobs/sha256/../../x/{key}",
        f"s3://bkt/blobs//{key}",
        "s3://bkt/blobs/",
        "s3://bkt/blobs",
        f"s3://bkt/blobs/{INCOMING}/0123",  # a temporary upload is no blob
        f"file:///bkt/blobs/{key}",
        f"https://bkt.s3.amazonaws.com/blobs/{key}",
    ]
    for uri in outside:
        assert store.key_for_uri(uri) is None, uri
    bare = S3BlobStore("bkt", "", endpoint_url=s3_endpoint)
    assert bare.url == "s3://bkt"
    assert bare.key_for_uri(f"s3://bkt/{key}") == key
    assert bare.key_for_uri(f"s3://bkt/{INCOMING}/x") is None


def test_blob_store_from_url(tmp_path):
    local = blob_store_from_url(f"file://{tmp_path}/b")
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "b").resolve()
    s3 = blob_store_from_url("s3://bucket/some/prefix/", "http://127.0.0.1:9")
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == (
        "bucket",
        "some/prefix",
        "http://127.0.0.1:9",
    )
    for bad in ("http://x/y", "s3:///nobucket", "blobs"):
        with pytest.raises(ValueError, match="BLOB_STORE_URL"):
            blob_store_from_url(bad)
