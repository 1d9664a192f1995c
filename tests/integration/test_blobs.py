"""POST/GET/HEAD /v1/blobs and GET /v1/assets/{id}/content on the local blob store, as a client
sees them, on both database backends: streamed uploads, dedup, checksums, the size cap, ranges,
conditional requests, and nothing kept when an upload fails (CONTRACT.md §3, §4)."""

from __future__ import annotations

import dataclasses
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app.storage import INCOMING, UPLOAD_CHUNK
from tests.helpers import problem, sha, unique

OCTET = {"Content-Type": "application/octet-stream"}


def root(app: Flask) -> Path:
    return Path(app.extensions["blob_store"].root)


def blob_file(app: Flask, data: bytes) -> Path:
    digest = sha(data)
    return root(app) / "sha256" / digest[:2] / digest


def incoming(app: Flask) -> list[Path]:
    folder = root(app) / INCOMING
    return list(folder.iterdir()) if folder.exists() else []


def blob_row(digest: str) -> Any:
    from app.blobs.models import Blob
    from app.extensions import db

    return db.session.get(Blob, digest)


def assert_not_kept(app: Flask, data: bytes) -> None:
    assert not blob_file(app, data).exists()
    assert incoming(app) == []
    assert blob_row(f"sha256:{sha(data)}") is None


def upload(api: Any, data: bytes, **headers: str) -> Any:
    return api.post("/v1/blobs", data=data, headers={**OCTET, **headers})


def stored(api: Any, data: bytes) -> str:
    response = upload(api, data)
    assert response.status_code in (200, 201), response.get_json()
    return sha(data)


@pytest.fixture
def cap(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cap(n)`` sets MAX_BLOB_BYTES to ``n`` for this test."""

    def set_cap(limit: int) -> None:
        settings = app.extensions["registry_settings"]
        monkeypatch.setitem(
            app.extensions,
            "registry_settings",
            dataclasses.replace(settings, max_blob_bytes=limit),
        )

    return set_cap


# ---- upload --------------------------------------------------------------------------------


def test_upload_answers_201_with_digest_size_uri_and_location(app, dev):
    data = unique(1000)
    response = upload(dev, data)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body == {
        "digest": f"sha256:{sha(data)}",
        "size_bytes": 1000,
        "uri": f"file://{blob_file(app, data)}",
    }
    assert response.headers["Location"] == f"/v1/blobs/sha256:{sha(data)}"
    assert blob_file(app, data).read_bytes() == data
    assert incoming(app) == []
    row = blob_row(body["digest"])
    assert (row.size_bytes, row.uri, row.created_by) == (1000, body["uri"], "developer-1")


def test_same_bytes_again_answer_200_with_the_same_body(dev, as_role):
    data = unique()
    first = upload(dev, data)
    again = upload(as_role("user"), data)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]


def test_bytes_in_the_store_without_a_row_answer_200_and_get_a_row(app, dev):
    data = unique()
    path = blob_file(app, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    response = upload(dev, data)
    assert response.status_code == 200
    assert blob_row(f"sha256:{sha(data)}").size_bytes == len(data)


def test_upload_without_content_type_is_accepted(dev):
    data = unique()
    response = dev.post("/v1/blobs", data=data)
    assert response.status_code == 201
    assert response.get_json()["digest"] == f"sha256:{sha(data)}"


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x"]
)
def test_other_content_types_are_415(app, dev, content_type):
    data = unique()
    response = dev.post("/v1/blobs", data=data, headers={"Content-Type": content_type})
    problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_not_kept(app, data)


def test_right_checksum_header_is_accepted(dev):
    data = unique()
    response = upload(dev, data, **{"X-Checksum-SHA256": sha(data).upper()})
    assert response.status_code == 201
    assert response.get_json()["digest"] == f"sha256:{sha(data)}"


def test_wrong_checksum_header_is_422_and_nothing_is_kept(app, dev):
    data = unique(3000)
    wrong = sha(b"something else")
    doc = problem(upload(dev, data, **{"X-Checksum-SHA256": wrong}), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["X-Checksum-SHA256"]
    assert sha(data) in doc["errors"]["X-Checksum-SHA256"][0]
    assert_not_kept(app, data)


@pytest.mark.parametrize("value", ["abc", "g" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64, ""])
def test_malformed_checksum_header_is_422(app, dev, value):
    data = unique()
    doc = problem(upload(dev, data, **{"X-Checksum-SHA256": value}), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["X-Checksum-SHA256"]
    assert_not_kept(app, data)


def test_body_over_the_cap_with_content_length_is_413(app, dev, cap):
    cap(1000)
    data = unique(1001)
    problem(upload(dev, data), 413, "PAYLOAD_TOO_LARGE")
    assert_not_kept(app, data)
    assert upload(dev, unique(1000)).status_code == 201  # the cap itself is allowed


def test_body_far_over_the_cap_with_content_length_is_413(app, dev, cap):
    cap(1000)
    data = unique(50_000)
    problem(upload(dev, data), 413, "PAYLOAD_TOO_LARGE")
    assert_not_kept(app, data)


def chunked(api: Any, data: bytes, **headers: str) -> Any:
    """POST ``data`` as a chunked body (no Content-Length), through a server that terminates
    the input stream as gunicorn and Werkzeug's server do."""
    return api.client.post(
        "/v1/blobs",
        input_stream=io.BytesIO(data),
        headers={
            "Authorization": f"Bearer {api.token}",
            "Transfer-Encoding": "chunked",
            **OCTET,
            **headers,
        },
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_is_stored_whole(app, dev):
    data = unique(3 * UPLOAD_CHUNK + 5)
    response = chunked(dev, data)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["size_bytes"] == len(data)
    assert blob_file(app, data).read_bytes() == data


def test_chunked_body_over_the_cap_is_413_and_nothing_is_kept(app, dev, cap):
    cap(1000)
    data = unique(1001)
    problem(chunked(dev, data), 413, "PAYLOAD_TOO_LARGE")
    assert_not_kept(app, data)
    big = unique(3 * UPLOAD_CHUNK)
    problem(chunked(dev, big), 413, "PAYLOAD_TOO_LARGE")
    assert_not_kept(app, big)


def test_chunked_body_of_exactly_the_cap_is_accepted(dev, cap):
    cap(1000)
    data = unique(1000)
    response = chunked(dev, data)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["size_bytes"] == 1000


def test_chunked_body_the_server_does_not_terminate_is_refused_not_stored_empty(app, dev):
    data = unique()
    response = dev.client.post(
        "/v1/blobs",
        input_stream=io.BytesIO(data),
        headers={"Authorization": f"Bearer {dev.token}", "Transfer-Encoding": "chunked"},
    )
    problem(response, 400, "INVALID_INPUT")
    assert not blob_file(app, b"").exists() or blob_row(f"sha256:{sha(b'')}") is None
    assert_not_kept(app, data)


def test_body_shorter_than_its_content_length_is_refused_and_nothing_is_kept(app, dev):
    # The client went away: the server saw the body end early (gunicorn ends it quietly).
    data = unique(5000)
    response = dev.client.post(
        "/v1/blobs",
        input_stream=io.BytesIO(data[:3000]),
        headers={"Authorization": f"Bearer {dev.token}", **OCTET},
        environ_overrides={"CONTENT_LENGTH": "5000", "wsgi.input_terminated": True},
    )
    problem(response, 400, "INVALID_INPUT")
    assert_not_kept(app, data)
    assert_not_kept(app, data[:3000])


def test_empty_body_is_the_empty_blob(app, dev):
    # An empty file is content too (an empty tokenizer config, a marker file); its digest
    # is the well-known sha256 of nothing, and it reads back as 0 bytes.
    empty = sha(b"")
    assert empty == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    response = dev.post("/v1/blobs", data=b"", headers=OCTET)
    assert response.status_code in (200, 201)
    assert response.get_json()["digest"] == f"sha256:{empty}"
    assert response.get_json()["size_bytes"] == 0
    assert blob_file(app, b"").read_bytes() == b""
    read = dev.get(f"/v1/blobs/sha256:{empty}")
    assert read.status_code == 200
    assert read.data == b"" and read.headers["Content-Length"] == "0"
    assert dev.get(f"/v1/blobs/sha256:{empty}", headers={"Range": "bytes=-5"}).status_code == 200
    ranged = dev.get(f"/v1/blobs/sha256:{empty}", headers={"Range": "bytes=0-9"})
    assert problem(ranged, 416, "RANGE_NOT_SATISFIABLE")
    assert ranged.headers["Content-Range"] == "bytes */0"


def test_viewer_may_not_upload(app, viewer):
    data = unique()
    problem(upload(viewer, data), 403, "FORBIDDEN")
    assert_not_kept(app, data)


def test_anonymous_may_not_upload(app, client):
    data = unique()
    problem(client.post("/v1/blobs", data=data, headers=OCTET), 401, "UNAUTHORIZED")
    assert_not_kept(app, data)


def test_anonymous_may_not_read(client, dev):
    digest = stored(dev, unique())
    problem(client.get(f"/v1/blobs/sha256:{digest}"), 401, "UNAUTHORIZED")
    assert client.head(f"/v1/blobs/sha256:{digest}").status_code == 401


# ---- download --------------------------------------------------------------------------------

DATA = bytes(range(256)) * 4  # 1024 bytes, each position distinguishable within 256


@pytest.fixture
def blob(dev: Any) -> tuple[str, bytes]:
    data = unique(16) + DATA  # 1040 bytes
    return stored(dev, data), data


def assert_blob_headers(response: Any, hex_digest: str, length: int) -> None:
    assert response.headers["Content-Length"] == str(length)
    assert response.headers["ETag"] == f'"sha256:{hex_digest}"'
    assert response.headers["X-Checksum-SHA256"] == hex_digest
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "application/octet-stream"


def test_get_streams_the_bytes_with_their_headers(viewer, blob):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}")
    assert response.status_code == 200
    assert response.data == data
    assert_blob_headers(response, digest, len(data))
    assert "Content-Range" not in response.headers


def test_head_has_the_headers_and_no_body(viewer, blob):
    digest, data = blob
    response = viewer.client.head(
        f"/v1/blobs/sha256:{digest}", headers={"Authorization": f"Bearer {viewer.token}"}
    )
    assert response.status_code == 200
    assert response.data == b""
    assert_blob_headers(response, digest, len(data))


def test_if_none_match_with_the_etag_is_304(viewer, blob):
    digest, _ = blob
    etag = f'"sha256:{digest}"'
    response = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag
    ranged = viewer.get(
        f"/v1/blobs/sha256:{digest}",
        headers={"If-None-Match": f'"other", W/{etag}', "Range": "bytes=0-9"},
    )
    assert ranged.status_code == 304  # preconditions come before Range (RFC 9110 §13.2.2)
    past = viewer.get(
        f"/v1/blobs/sha256:{digest}", headers={"If-None-Match": etag, "Range": "bytes=99999-"}
    )
    assert past.status_code == 304
    other = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"If-None-Match": '"sha256:00"'})
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=-5", 1035, 1039),
        ("bytes=10-", 10, 1039),
        ("bytes=1000-5000", 1000, 1039),  # an end past the body is cut to it
        ("bytes=-5000", 0, 1039),  # a suffix longer than the body is all of it
        ("bytes=1039-1039", 1039, 1039),
        ("BYTES=0-0", 0, 0),
    ],
)
def test_range_answers_206_with_content_range(viewer, blob, header, start, end):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"Range": header})
    assert response.status_code == 206
    assert response.data == data[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert_blob_headers(response, digest, end - start + 1)


def test_head_with_a_range_answers_its_headers(viewer, blob):
    digest, data = blob
    response = viewer.client.head(
        f"/v1/blobs/sha256:{digest}",
        headers={"Authorization": f"Bearer {viewer.token}", "Range": "bytes=0-9"},
    )
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 0-9/{len(data)}"
    assert response.headers["Content-Length"] == "10"


@pytest.mark.parametrize("header", ["bytes=1040-", "bytes=5000-6000", "bytes=-0"])
def test_range_past_the_end_is_416(viewer, blob, header):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"Range": header})
    problem(response, 416, "RANGE_NOT_SATISFIABLE")
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-9,20-29",  # several ranges: we may send everything
        "bytes=abc",
        "bytes=9-0",
        "bytes=-",
        "bytes=--5",
        "bytes=+1-5",
        "bytes=1_0-20",
        "items=0-9",
        "bytes 0-9",
        "",
    ],
)
def test_unusable_range_sends_everything(viewer, blob, header):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}", headers={"Range": header})
    assert response.status_code == 200
    assert response.data == data
    assert "Content-Range" not in response.headers


def test_redirect_on_the_local_store_just_streams(viewer, blob):
    digest, data = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}?redirect=true")
    assert response.status_code == 200
    assert response.data == data
    assert "Location" not in response.headers


def test_unknown_digest_is_404(viewer):
    response = viewer.get(f"/v1/blobs/sha256:{sha(unique())}")
    problem(response, 404, "NOT_FOUND")
    head = viewer.client.head(
        f"/v1/blobs/sha256:{sha(unique())}", headers={"Authorization": f"Bearer {viewer.token}"}
    )
    assert head.status_code == 404


@pytest.mark.parametrize(
    "digest",
    [
        "sha1:" + "a" * 40,
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "a" * 64,
        "sha512:" + "a" * 128,
        "sha256:",
    ],
)
def test_malformed_digest_is_400(viewer, digest):
    problem(viewer.get(f"/v1/blobs/{digest}"), 400, "INVALID_INPUT")


def test_unknown_query_parameter_is_refused(viewer, blob):
    digest, _ = blob
    response = viewer.get(f"/v1/blobs/sha256:{digest}?redirect=maybe")
    problem(response, 422, "VALIDATION_FAILED")


def test_a_large_blob_streams_back_in_bounded_chunks(app, dev):
    data = unique(9 * 1024 * 1024 + 3)
    digest = stored(dev, data)
    response = dev.get(f"/v1/blobs/sha256:{digest}")
    assert response.status_code == 200
    chunks = list(response.response)
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 4 * 1024 * 1024
    assert blob_file(app, data).stat().st_size == len(data)


# ---- asset content ---------------------------------------------------------------------------


def register(api: Any, **fields: Any) -> Any:
    doc = {"asset_type": "model", "name": f"acme/m-{uuid.uuid4().hex[:8]}", "version": "1.0.0"}
    return api.post("/v1/assets", json=doc | fields)


def test_asset_with_a_checksum_of_an_uploaded_blob_serves_its_content(dev, viewer, blob):
    digest, data = blob
    response = register(dev, checksum={"algorithm": "SHA256", "value": digest.upper()})
    assert response.status_code == 202, response.get_json()
    asset_id = response.get_json()["id"]
    content = viewer.get(f"/v1/assets/{asset_id}/content")
    assert content.status_code == 200
    assert content.data == data
    assert_blob_headers(content, digest, len(data))
    ranged = viewer.get(f"/v1/assets/{asset_id}/content", headers={"Range": "bytes=-5"})
    assert ranged.status_code == 206
    assert ranged.data == data[-5:]
    assert ranged.headers["Content-Range"] == f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}"
    past = viewer.get(f"/v1/assets/{asset_id}/content", headers={"Range": "bytes=99999-"})
    problem(past, 416, "RANGE_NOT_SATISFIABLE")
    cached = viewer.get(
        f"/v1/assets/{asset_id}/content", headers={"If-None-Match": f'"sha256:{digest}"'}
    )
    assert cached.status_code == 304
    local = viewer.get(f"/v1/assets/{asset_id}/content?redirect=true")
    assert local.status_code == 200 and local.data == data


def test_asset_with_the_uri_of_an_uploaded_blob_serves_its_content(dev, viewer):
    data = unique(500)
    uploaded = upload(dev, data).get_json()
    response = register(
        dev, checksum={"algorithm": "SHA256", "value": sha(data)}, storage={"uri": uploaded["uri"]}
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["storage"] == {"uri": uploaded["uri"]}
    content = viewer.get(f"/v1/assets/{response.get_json()['id']}/content")
    assert content.status_code == 200 and content.data == data
    assert_blob_headers(content, sha(data), 500)


def test_metadata_only_asset_has_no_content(dev, viewer):
    response = register(dev)
    assert response.status_code == 202
    problem(viewer.get(f"/v1/assets/{response.get_json()['id']}/content"), 404, "NOT_FOUND")


def test_unknown_asset_content_is_404(viewer):
    problem(viewer.get("/v1/assets/01J0000000000000000000000Z/content"), 404, "NOT_FOUND")


def test_checksum_only_registration_of_a_blob_not_in_the_store_is_422(dev):
    response = register(dev, checksum={"algorithm": "SHA256", "value": sha(unique())})
    doc = problem(response, 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["checksum.value"]


def outside_uris(app: Flask, hex_digest: str) -> Iterator[str]:
    base = root(app)
    key = f"sha256/{hex_digest[:2]}/{hex_digest}"
    yield f"file://{base.parent}/elsewhere/{key}"
    yield f"file://{base}-other/{key}"
    yield f"file://{base}/../{base.name}-other/{key}"
    yield f"file://{base}/sha256/../../{key}"
    yield "file:///etc/passwd"
    yield f"file://{base}/{INCOMING}/upload-x"
    yield f"s3://bucket/blobs/{key}"
    yield f"https://example.com/{key}"


def test_storage_uri_outside_the_store_is_422(app, dev, blob):
    digest, _ = blob
    for uri in outside_uris(app, digest):
        response = register(
            dev, checksum={"algorithm": "SHA256", "value": digest}, storage={"uri": uri}
        )
        doc = problem(response, 422, "VALIDATION_FAILED")
        assert list(doc["errors"]) == ["storage.uri"], uri


def test_content_of_an_asset_whose_uri_names_a_directory_is_404(app, dev, viewer, blob):
    digest, _ = blob
    uri = f"file://{root(app)}/sha256"
    response = register(
        dev, checksum={"algorithm": "SHA256", "value": digest}, storage={"uri": uri}
    )
    assert response.status_code == 202, response.get_json()
    problem(viewer.get(f"/v1/assets/{response.get_json()['id']}/content"), 404, "NOT_FOUND")


# ---- concurrency ------------------------------------------------------------------------------


def test_two_uploads_of_the_same_bytes_racing_both_succeed(tmp_path, monkeypatch):
    """On PostgreSQL, on an app of its own: the per-test transaction cannot be shared between
    threads, and SQLite's BEGIN IMMEDIATE serialises whole requests so no race can happen."""
    import threading

    from flask_migrate import upgrade

    from app import create_app
    from app.blobs.models import Blob
    from app.extensions import db
    from app.users.service import create_user
    from tests.conftest import PASSWORD, drop_pg_database, fresh_pg_database, login, make_settings

    url = fresh_pg_database("_blobrace")
    try:
        app = create_app(make_settings(url, tmp_path))
        with app.app_context():
            upgrade()
            create_user("racer", PASSWORD, ["user"])
        store = app.extensions["blob_store"]
        barrier = threading.Barrier(2)
        original_put = store.put

        def put_together(*args: Any, **kwargs: Any) -> Any:
            result = original_put(*args, **kwargs)
            barrier.wait(timeout=10)  # both have stored the bytes; both now record the blob
            return result

        monkeypatch.setattr(store, "put", put_together)
        data = unique(1000)
        token = login(app.test_client(), "racer").token
        answers: list[tuple[int, Any]] = []

        def post() -> None:
            response = app.test_client().post(
                "/v1/blobs", data=data, headers={"Authorization": f"Bearer {token}", **OCTET}
            )
            answers.append((response.status_code, response.get_json()))

        threads = [threading.Thread(target=post) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(status for status, _ in answers) == [200, 201], answers
        assert answers[0][1] == answers[1][1]
        with app.app_context():
            assert db.session.query(Blob).count() == 1
            db.session.remove()
            db.engine.dispose()
    finally:
        drop_pg_database(url)


def test_an_upload_in_progress_does_not_hold_the_sqlite_write_lock(tmp_path, monkeypatch):
    """Embedded mode: other writers (registrations, workers) go on during a long upload."""
    import sqlite3

    from flask_migrate import upgrade

    from app import create_app
    from app.users.service import create_user
    from tests.conftest import PASSWORD, login, make_settings

    db_file = tmp_path / "lock.db"
    app = create_app(make_settings(f"sqlite:///{db_file}", tmp_path))
    with app.app_context():
        upgrade()
        create_user("uploader", PASSWORD, ["user"])
    store = app.extensions["blob_store"]
    original_put = store.put
    writable: list[bool] = []

    def put_and_probe(*args: Any, **kwargs: Any) -> Any:
        other = sqlite3.connect(db_file, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            writable.append(True)
        except sqlite3.OperationalError:
            writable.append(False)
        finally:
            other.close()
        return original_put(*args, **kwargs)

    monkeypatch.setattr(store, "put", put_and_probe)
    token = login(app.test_client(), "uploader").token
    response = app.test_client().post(
        "/v1/blobs", data=unique(), headers={"Authorization": f"Bearer {token}", **OCTET}
    )
    assert response.status_code == 201, response.get_json()
    assert writable == [True]
