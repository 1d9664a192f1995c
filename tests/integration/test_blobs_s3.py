"""Blobs and asset content on an S3 blob store (moto's S3 server over HTTP), as a client sees
them: the registry configured with ``BLOB_STORE_URL=s3://bucket/blobs`` and ``S3_ENDPOINT_URL``
(CONTRACT.md §3, §4)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from flask import Flask

from app.storage import INCOMING
from tests.conftest import PASSWORD, Api, login, make_settings
from tests.helpers import problem, sha, unique

OCTET = {"Content-Type": "application/octet-stream"}
CAP = 4096
PREFIX = "blobs"


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    name = f"registry-s3-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture(scope="module")
def s3_app(
    bucket: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    """A registry on SQLite whose blob store is the moto bucket, with one user per role."""
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.users.service import create_user

    var: Path = tmp_path_factory.mktemp("s3-var")
    app = create_app(
        make_settings(
            f"sqlite:///{var / 'registry.db'}",
            var,
            MAX_BLOB_BYTES=str(CAP),
            BLOB_STORE_URL=f"s3://{bucket}/{PREFIX}",
            S3_ENDPOINT_URL=s3_endpoint,
        )
    )
    with app.app_context():
        upgrade()
        for role in ("viewer", "user", "developer"):
            create_user(f"s3-{role}", PASSWORD, [role])
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def dev(s3_app: Flask) -> Api:
    return login(s3_app.test_client(), "s3-developer")


@pytest.fixture(scope="module")
def viewer(s3_app: Flask) -> Api:
    return login(s3_app.test_client(), "s3-viewer")


def object_key(data: bytes) -> str:
    digest = sha(data)
    return f"{PREFIX}/sha256/{digest[:2]}/{digest}"


def keys(s3: Any, bucket: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def assert_not_kept(s3_app: Flask, s3: Any, bucket: str, data: bytes) -> None:
    from app.blobs.models import Blob
    from app.extensions import db

    present = keys(s3, bucket)
    assert object_key(data) not in present
    assert [k for k in present if k.startswith(f"{PREFIX}/{INCOMING}")] == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with s3_app.app_context():
        assert db.session.get(Blob, f"sha256:{sha(data)}") is None


def upload(api: Api, data: bytes, **headers: str) -> Any:
    return api.post("/v1/blobs", data=data, headers={**OCTET, **headers})


def test_upload_puts_the_bytes_in_the_bucket(s3, bucket, dev):
    data = unique(1000)
    response = upload(dev, data)
    assert response.status_code == 201, response.get_json()
    assert response.get_json() == {
        "digest": f"sha256:{sha(data)}",
        "size_bytes": 1000,
        "uri": f"s3://{bucket}/{object_key(data)}",
    }
    assert response.headers["Location"] == f"/v1/blobs/sha256:{sha(data)}"
    assert s3.get_object(Bucket=bucket, Key=object_key(data))["Body"].read() == data
    assert [k for k in keys(s3, bucket) if INCOMING in k] == []
    again = dev.post("/v1/blobs", data=data)  # no Content-Type
    assert again.status_code == 200
    assert again.get_json() == response.get_json()


def test_json_content_type_is_415(s3_app, s3, bucket, dev):
    data = unique()
    response = dev.post("/v1/blobs", data=data, headers={"Content-Type": "application/json"})
    problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_not_kept(s3_app, s3, bucket, data)


def test_checksum_header(s3_app, s3, bucket, dev):
    data = unique()
    assert upload(dev, data, **{"X-Checksum-SHA256": sha(data)}).status_code == 201
    other = unique()
    doc = problem(upload(dev, other, **{"X-Checksum-SHA256": sha(data)}), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["X-Checksum-SHA256"]
    assert_not_kept(s3_app, s3, bucket, other)
    problem(upload(dev, other, **{"X-Checksum-SHA256": "xyz"}), 422, "VALIDATION_FAILED")
    assert_not_kept(s3_app, s3, bucket, other)


def test_over_the_cap_is_413_with_or_without_content_length(s3_app, s3, bucket, dev):
    data = unique(CAP + 1)
    problem(upload(dev, data), 413, "PAYLOAD_TOO_LARGE")
    assert_not_kept(s3_app, s3, bucket, data)
    response = dev.client.post(
        "/v1/blobs",
        input_stream=io.BytesIO(data),
        headers={"Authorization": f"Bearer {dev.token}", "Transfer-Encoding": "chunked", **OCTET},
        environ_overrides={"wsgi.input_terminated": True},
    )
    problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert_not_kept(s3_app, s3, bucket, data)


def test_permissions(s3_app, s3, bucket, viewer):
    data = unique()
    problem(upload(viewer, data), 403, "FORBIDDEN")
    anonymous = s3_app.test_client().post("/v1/blobs", data=data, headers=OCTET)
    problem(anonymous, 401, "UNAUTHORIZED")
    assert_not_kept(s3_app, s3, bucket, data)


def test_empty_blob_round_trips(dev, viewer):
    response = dev.post("/v1/blobs", data=b"", headers=OCTET)
    assert response.status_code in (200, 201)
    assert response.get_json()["size_bytes"] == 0
    read = viewer.get(f"/v1/blobs/sha256:{sha(b'')}")
    assert read.status_code == 200
    assert read.data == b"" and read.headers["Content-Length"] == "0"


@pytest.fixture(scope="module")
def blob(dev: Api) -> tuple[str, bytes]:
    data = unique(16) + bytes(range(256)) * 4  # 1040 bytes
    response = upload(dev, data)
    assert response.status_code == 201
    return sha(data), data


def test_get_streams_with_headers(viewer, blob):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}")
    assert response.status_code == 200
    assert response.data == data
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["ETag"] == f'"sha256:{digest}"'
    assert response.headers["X-Checksum-SHA256"] == digest
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "application/octet-stream"
    head = viewer.client.head(
        f"/v1/blobs/sha256:{digest}", headers={"Authorization": f"Bearer {viewer.token}"}
    )
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == f'"sha256:{digest}"'
    cached = viewer.get(
        f"/v1/blobs/sha256:{digest}", headers={"If-None-Match": head.headers["ETag"]}
    )
    assert cached.status_code == 304


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=-5", 1035, 1039), ("bytes=10-", 10, 1039)],
)
def test_ranges(viewer, blob, header, start, end):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"Range": header})
    assert response.status_code == 206
    assert response.data == data[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert response.headers["Content-Length"] == str(end - start + 1)


def test_range_past_the_end_is_416_and_several_ranges_send_all(viewer, blob):
    digest, data = blob
    past = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"Range": "bytes=1040-"})
    problem(past, 416, "RANGE_NOT_SATISFIABLE")
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"
    multi = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200 and multi.data == data


def test_unknown_and_malformed_digests(viewer):
    problem(viewer.get(f"/v1/blobs/sha256:{sha(unique())}"), 404, "NOT_FOUND")
    problem(viewer.get("/v1/blobs/sha1:" + "a" * 40), 400, "INVALID_INPUT")
    problem(viewer.get("/v1/blobs/sha256:" + "A" * 64), 400, "INVALID_INPUT")


def presigned_fetch(response: Any, data: bytes, s3_endpoint: str, bucket: str) -> None:
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(f"{s3_endpoint}/{bucket}/{PREFIX}/sha256/")
    assert "X-Amz-Signature=" in location
    fetched = requests.get(location, timeout=10)  # no Authorization: the URL is the credential
    assert fetched.status_code == 200
    assert fetched.content == data


def test_redirect_true_is_302_to_a_presigned_url(viewer, blob, s3_endpoint, bucket):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}?redirect=true")
    presigned_fetch(response, data, s3_endpoint, bucket)
    assert response.headers["ETag"] == f'"sha256:{digest}"'
    missing = viewer.get(f"/v1/blobs/sha256:{sha(unique())}?redirect=true")
    problem(missing, 404, "NOT_FOUND")


def register(api: Api, **fields: Any) -> Any:
    doc = {"asset_type": "model", "name": f"acme/s3-{uuid.uuid4().hex[:8]}", "version": "1.0.0"}
    return api.post("/v1/assets", json=doc | fields)


def test_asset_content_by_checksum_and_by_uri(dev, viewer, blob, s3_endpoint, bucket):
    digest, data = blob
    by_checksum = register(dev, checksum={"algorithm": "SHA256", "value": digest})
    assert by_checksum.status_code == 202, by_checksum.get_json()
    uri = f"s3://{bucket}/{PREFIX}/sha256/{digest[:2]}/{digest}"
    by_uri = register(dev, checksum={"algorithm": "SHA256", "value": digest}, storage={"uri": uri})
    assert by_uri.status_code == 202, by_uri.get_json()
    for created in (by_checksum, by_uri):
        asset_id = created.get_json()["id"]
        content = viewer.get(f"/v1/assets/{asset_id}/content")
        assert content.status_code == 200 and content.data == data
        assert content.headers["X-Checksum-SHA256"] == digest
        ranged = viewer.get(f"/v1/assets/{asset_id}/content", headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206 and ranged.data == data[:10]
        redirected = viewer.get(f"/v1/assets/{asset_id}/content?redirect=true")
        presigned_fetch(redirected, data, s3_endpoint, bucket)


def test_registration_content_checks(dev, bucket):
    missing = register(dev, checksum={"algorithm": "SHA256", "value": sha(unique())})
    assert list(problem(missing, 422, "VALIDATION_FAILED")["errors"]) == ["checksum.value"]
    hex_digest = sha(unique())
    key = f"sha256/{hex_digest[:2]}/{hex_digest}"
    for uri in (
        f"s3://other-bucket/{PREFIX}/{key}",
        f"s3://{bucket}/other/{key}",
        f"s3://{bucket}/{key}",
        f"s3://{bucket}/{PREFIX}/../other/{key}",
        f"s3://{bucket}/{PREFIX}/{INCOMING}/abc",
        f"file:///var/{PREFIX}/{key}",
    ):
        response = register(
            dev, checksum={"algorithm": "SHA256", "value": hex_digest}, storage={"uri": uri}
        )
        assert list(problem(response, 422, "VALIDATION_FAILED")["errors"]) == ["storage.uri"], uri
    metadata_only = register(dev)
    assert metadata_only.status_code == 202
    response = dev.get(f"/v1/assets/{metadata_only.get_json()['id']}/content")
    problem(response, 404, "NOT_FOUND")
