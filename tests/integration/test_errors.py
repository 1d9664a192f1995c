"""Every error is a problem+json document with a stable code; no input makes the registry fail
with a 500, an HTML page or a stack trace (CONTRACT.md §1, §8)."""

from __future__ import annotations

import datetime as dt
import io
import logging
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from tests.conftest import JWT_SECRET, PASSWORD, make_settings

pytestmark = pytest.mark.integration

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "request_id"}
DOWN_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/nope"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """The response is the contract's problem document, consistent with its headers."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert PROBLEM_FIELDS <= set(body) <= PROBLEM_FIELDS | {"errors"}
    assert body["status"] == status and type(body["status"]) is int
    assert body["code"] == code
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in text and "<html" not in text.lower()
    return body


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/nope", "/v1/users/x/y/z", "/v2/assets", "/%E2%98%83"]
)
def test_unknown_route_is_404_problem(client: FlaskClient, path: str) -> None:
    body = assert_problem(client.get(path, headers={"Accept": "text/html"}), 404, "NOT_FOUND")

    assert "errors" not in body


def test_wrong_method_is_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/v1/users")

    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed


def test_wrong_method_on_health_is_405(client: FlaskClient) -> None:
    response = client.post("/health", json={})

    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["Allow"]


def test_errors_of_every_kind_share_one_shape(
    client: FlaskClient, admin: Any, viewer: Any, users: dict[str, str]
) -> None:
    assert_problem(client.get("/v1/users"), 401, "UNAUTHORIZED")
    assert_problem(viewer.get("/v1/users"), 403, "FORBIDDEN")
    assert_problem(admin.get("/v1/users/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 404, "NOT_FOUND")
    body = {"username": "admin-1", "password": PASSWORD, "roles": ["admin"]}
    assert_problem(admin.post("/v1/users", json=body), 409, "ALREADY_EXISTS")
    assert_problem(
        admin.post("/v1/users", data="x", content_type="text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE"
    )
    assert_problem(admin.get("/v1/users?cursor=bad"), 400, "INVALID_INPUT")
    problem = assert_problem(admin.get("/v1/users?limit=0"), 422, "VALIDATION_FAILED")
    assert problem["errors"] == {"limit": problem["errors"]["limit"]}
    assert problem["errors"]["limit"]


def test_validation_errors_use_dotted_paths_without_location(admin: Any) -> None:
    response = admin.post(
        "/v1/users", json={"username": "ok-name", "password": PASSWORD, "roles": ["x", "viewer"]}
    )

    problem = assert_problem(response, 422, "VALIDATION_FAILED")
    assert set(problem["errors"]) == {"roles.0"}
    assert "roles.0" in problem["detail"]


# --- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health/live", "/nope", "/v1/auth/me"])
def test_a_sane_request_id_is_echoed(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers={"X-Request-ID": "client-req.42:a_b-c"})

    assert response.headers["X-Request-ID"] == "client-req.42:a_b-c"
    if response.status_code >= 400:
        assert response.get_json(force=True)["request_id"] == "client-req.42:a_b-c"


@pytest.mark.parametrize("path", ["/health/live", "/nope", "/v1/auth/me"])
@pytest.mark.parametrize(
    "incoming", [None, "", "has space", "x" * 129, "<script>", "abc\n", "ünïcode"]
)
def test_otherwise_a_uuid_is_generated(
    client: FlaskClient, path: str, incoming: str | None
) -> None:
    environ = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}

    response = client.get(path, environ_overrides=environ)

    generated = response.headers["X-Request-ID"]
    assert str(uuid.UUID(generated)) == generated
    assert uuid.UUID(generated).version == 4  # a random UUID, of RFC 9562's variant
    assert uuid.UUID(generated).variant == uuid.RFC_4122
    if response.status_code >= 400:
        assert response.get_json(force=True)["request_id"] == generated


def test_a_failure_before_the_request_hooks_still_has_one_request_id(fresh_app: Flask) -> None:
    from app.errors import ForbiddenError

    def refuse_early() -> None:
        raise ForbiddenError("refused before the request id was assigned")

    fresh_app.before_request_funcs.setdefault(None, []).insert(0, refuse_early)

    response = fresh_app.test_client().get("/health/live")

    body = assert_problem(response, 403, "FORBIDDEN")  # body id == header id
    assert str(uuid.UUID(body["request_id"])) == body["request_id"]


def test_each_request_gets_its_own_id(client: FlaskClient) -> None:
    ids = {client.get("/health/live").headers["X-Request-ID"] for _ in range(3)}

    assert len(ids) == 3


# --- malformed bodies ------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"username":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (DEEP, 400, "INVALID_INPUT"),
        (DEEP_OBJECT, 400, "INVALID_INPUT"),
        (b'{"username": "\xff\xfe", "password": "x"}', 400, "INVALID_INPUT"),
        (b'{"username": "\\ud800", "password": "x"}', 400, "INVALID_INPUT"),
        (b'{"username": NaN, "password": "x"}', 400, "INVALID_INPUT"),
        (b'{"username": Infinity, "password": "x"}', 400, "INVALID_INPUT"),
        (b'{"username": 1e999, "password": "x"}', 400, "INVALID_INPUT"),
        (b'{"username": "a", "password": "b"', 400, "INVALID_INPUT"),
        (b'{"username": "a", "password": "b"} trailing', 400, "INVALID_INPUT"),
        (b"\xef\xbb\xbf{}", 400, "INVALID_INPUT"),
        (
            b'{"username": 123456789012345678901234567890, "password": "x"}',
            422,
            "VALIDATION_FAILED",
        ),
        (b'{"username": -9223372036854775809, "password": "x"}', 422, "VALIDATION_FAILED"),
        (b"", 400, "INVALID_INPUT"),  # no body at all: nothing to parse
        (b"null", 422, "VALIDATION_FAILED"),
        (b"[]", 422, "VALIDATION_FAILED"),
        (b'"text"', 422, "VALIDATION_FAILED"),
        (b"42", 422, "VALIDATION_FAILED"),
        (b'{"username": "a", "password": "b", "extra": 1}', 422, "VALIDATION_FAILED"),
        (b'{"username": {"$ne": null}, "password": {"$ne": null}}', 422, "VALIDATION_FAILED"),
    ],
    ids=[
        "deep-array",
        "deep-object",
        "invalid-utf8",
        "lone-surrogate",
        "nan",
        "infinity",
        "huge-float",
        "truncated",
        "trailing-garbage",
        "bom",
        "huge-int",
        "below-int64",
        "empty",
        "null",
        "array",
        "string",
        "number",
        "unknown-field",
        "operator-injection",
    ],
)
def test_malformed_json_is_never_a_500(
    client: FlaskClient, users: dict[str, str], data: bytes, status: int, code: str
) -> None:
    response = client.post("/v1/auth/login", data=data, content_type="application/json")

    assert_problem(response, status, code)


def test_malformed_json_from_an_admin_creates_nothing(admin: Any) -> None:
    for data in (DEEP, b'{"username": NaN}', b"\xff", b""):
        response = admin.post("/v1/users", data=data, content_type="application/json")
        assert response.status_code in (400, 422), response.get_data(as_text=True)
        assert response.headers["Content-Type"] == "application/problem+json"
    assert admin.get("/v1/users").get_json()["total"] == 4


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_endpoint_refuses_other_media_types(
    client: FlaskClient, users: dict[str, str], content_type: str | None
) -> None:
    data = f'{{"username": "viewer-1", "password": "{PASSWORD}"}}'
    response = client.post("/v1/auth/login", data=data, content_type=content_type)

    assert_problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_json_with_charset_and_problem_suffix_is_accepted(
    client: FlaskClient, users: dict[str, str]
) -> None:
    data = f'{{"username": "viewer-1", "password": "{PASSWORD}"}}'

    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = client.post("/v1/auth/login", data=data, content_type=content_type)
        assert response.status_code == 200, content_type


def test_a_17_mib_body_is_413(client: FlaskClient, admin: Any) -> None:
    big = b'{"username": "' + b"a" * (17 * 1024 * 1024) + b'", "password": "x"}'

    assert_problem(
        client.post("/v1/auth/login", data=big, content_type="application/json"),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    assert_problem(
        admin.post("/v1/users", data=big, content_type="application/json"),
        413,
        "PAYLOAD_TOO_LARGE",
    )


def test_a_17_mib_chunked_body_is_413(client: FlaskClient) -> None:
    big = b'{"username": "' + b"a" * (17 * 1024 * 1024) + b'", "password": "x"}'

    response = client.post(
        "/v1/auth/login",
        input_stream=io.BytesIO(big),
        content_type="application/json",
        # As gunicorn passes a chunked request: no Content-Length, a stream it terminates.
        environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"},
    )

    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")


def test_a_small_chunked_body_is_parsed(client: FlaskClient, users: dict[str, str]) -> None:
    data = f'{{"username": "viewer-1", "password": "{PASSWORD}"}}'.encode()

    response = client.post(
        "/v1/auth/login",
        input_stream=io.BytesIO(data),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"},
    )

    assert response.status_code == 200, response.get_data(as_text=True)


def test_a_body_just_under_the_limit_is_parsed(client: FlaskClient) -> None:
    big = b'{"username": "' + b"a" * (15 * 1024 * 1024) + b'", "password": "x"}'

    response = client.post("/v1/auth/login", data=big, content_type="application/json")

    assert set(assert_problem(response, 422, "VALIDATION_FAILED")["errors"]) == {"username"}


def test_malformed_query_values_are_never_a_500(admin: Any, users: dict[str, str]) -> None:
    for query in ("limit=99999999999999999999999", "limit=1e3", "limit=", "cursor=", "limit=%FF"):
        response = admin.get(f"/v1/users?{query}")
        assert response.status_code in (400, 422), (query, response.get_data(as_text=True))
        assert response.headers["Content-Type"] == "application/problem+json"


# --- unexpected failures ---------------------------------------------------------------------


@pytest.fixture
def fresh_app(tmp_path: Path) -> Flask:
    """An app of its own (no shared fixture state), on an empty SQLite database."""
    return create_app(make_settings(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path))


def test_an_unexpected_exception_is_a_500_without_internals(
    fresh_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> Any:
        raise RuntimeError("internal detail: /etc/secret.conf line 7")

    fresh_app.add_url_rule("/boom", view_func=explode)

    with caplog.at_level(logging.ERROR):
        response = fresh_app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})

    body = assert_problem(response, 500, "INTERNAL_ERROR")
    assert body["request_id"] == "boom-1"
    text = response.get_data(as_text=True)
    assert "secret.conf" not in text and "RuntimeError" not in text
    # The operator, unlike the client, gets the whole story, tied to the request id.
    failures = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert failures, caplog.records
    assert "secret.conf" in str(failures[0].exc_info[1])
    assert failures[0].request_id == "boom-1"


def test_an_http_500_raised_by_a_view_is_rendered_as_a_problem(fresh_app: Flask) -> None:
    from werkzeug.exceptions import InternalServerError

    def fail() -> Any:
        raise InternalServerError("do not show this")

    fresh_app.add_url_rule("/fail", view_func=fail)

    response = fresh_app.test_client().get("/fail")

    assert_problem(response, 500, "INTERNAL_ERROR")
    assert "do not show this" not in response.get_data(as_text=True)


def test_a_broken_query_is_a_500_not_an_outage(fresh_app: Flask) -> None:
    from sqlalchemy import text

    from app.extensions import db

    def broken() -> Any:
        db.session.execute(text("SELECT missing_column FROM missing_table"))
        return "unreachable"

    fresh_app.add_url_rule("/broken", view_func=broken)

    assert_problem(fresh_app.test_client().get("/broken"), 500, "INTERNAL_ERROR")


def _operational(message: str) -> Exception:
    from sqlalchemy import exc

    return exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (lambda: _operational("database is locked"), 503, "UNAVAILABLE"),
        (lambda: _operational("unable to open database file"), 503, "UNAVAILABLE"),
        (lambda: _operational("no such table: users"), 500, "INTERNAL_ERROR"),
        (lambda: _sa("TimeoutError", "QueuePool limit reached"), 503, "UNAVAILABLE"),
        (
            lambda: _sa("DataError", "SELECT 1", {}, ValueError("out of range")),
            400,
            "INVALID_INPUT",
        ),
    ],
    ids=["locked", "cannot-open", "no-such-table", "pool-timeout", "data-error"],
)
def test_database_errors_map_to_what_they_mean(
    fresh_app: Flask, error: Any, status: int, code: str
) -> None:
    def fail() -> Any:
        raise error()

    fresh_app.add_url_rule("/db-error", view_func=fail)

    response = fresh_app.test_client().get("/db-error")

    assert_problem(response, status, code)
    assert "users" not in response.get_json()["detail"]


def _sa(name: str, *args: Any) -> Exception:
    from sqlalchemy import exc

    error: Exception = getattr(exc, name)(*args)
    return error


# --- the database is down --------------------------------------------------------------------


@pytest.fixture
def down_app(tmp_path: Path) -> Flask:
    return create_app(make_settings(DOWN_DATABASE_URL, tmp_path))


def _access_token(user_id: str = "01HZZZZZZZZZZZZZZZZZZZZZZZ") -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": user_id,
        "iss": "llm-registry",
        "aud": "llm-registry-api",
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=5),
        "jti": "j",
        "fam": "f",
        "type": "access",
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/v1/auth/me", {"auth": True}),
        ("get", "/v1/users", {"auth": True}),
        ("get", "/v1/assets", {"auth": True}),
        ("post", "/v1/auth/login", {"json": {"username": "admin", "password": PASSWORD}}),
    ],
)
def test_database_down_is_503_quickly(
    down_app: Flask, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    client = down_app.test_client()
    if kwargs.pop("auth", False):
        kwargs["headers"] = {"Authorization": f"Bearer {_access_token()}"}
    started = time.monotonic()

    response = getattr(client, method)(path, **kwargs)

    assert time.monotonic() - started < 10
    body = assert_problem(response, 503, "UNAVAILABLE")
    assert "psycopg" not in body["detail"] and "127.0.0.1" not in body["detail"]
    assert int(response.headers["Retry-After"]) > 0


def test_database_down_makes_health_unhealthy_and_not_ready(down_app: Flask) -> None:
    client = down_app.test_client()
    started = time.monotonic()

    health = client.get("/health")
    ready = client.get("/health/ready")

    assert time.monotonic() - started < 10
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["status"] == "error"
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["database"]["status"] == "error"
    assert client.get("/health/live").status_code == 200
