"""Login, the caller's identity and every way a credential can be wrong (CONTRACT.md §2)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import JWT_SECRET, PASSWORD, login

pytestmark = pytest.mark.integration

ISSUER = "llm-registry"
AUDIENCE = "llm-registry-api"
VIEWER_PERMISSIONS = {"asset:read", "dependency:read", "job:read", "event:read"}
USER_PERMISSIONS = VIEWER_PERMISSIONS | {"asset:write"}
DEVELOPER_PERMISSIONS = USER_PERMISSIONS | {"asset:delete", "policy:write", "apikey:create"}


def _login(client: FlaskClient, username: str, password: str) -> Any:
    return client.post("/v1/auth/login", json={"username": username, "password": password})


def _token(**claims: Any) -> str:
    """An HS256 token signed with the test secret: valid unless ``claims`` say otherwise."""
    now = dt.datetime.now(dt.UTC)
    secret = claims.pop("secret", JWT_SECRET)
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=5),
        "jti": "test-jti",
        "fam": "test-login-family",
        "type": "access",
        "fresh": False,
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def _assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "UNAUTHORIZED"
    assert body["status"] == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --- login ---------------------------------------------------------------------------------


def test_login_returns_tokens_and_the_user(client: FlaskClient, users: dict[str, str]) -> None:
    response = _login(client, "developer-1", PASSWORD)

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "user"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["user"] == {
        "id": users["developer"],
        "username": "developer-1",
        "roles": ["developer"],
    }
    assert body["access_token"] != body["refresh_token"]
    assert response.headers["Cache-Control"] == "no-store"


def test_tokens_are_hs256_with_issuer_audience_and_lifetime(
    client: FlaskClient, users: dict[str, str]
) -> None:
    body = _login(client, "viewer-1", PASSWORD).get_json()

    for name in ("access_token", "refresh_token"):
        header = jwt.get_unverified_header(body[name])
        claims = jwt.decode(body[name], options={"verify_signature": False})
        assert header["alg"] == "HS256"
        assert claims["iss"] == ISSUER
        assert claims["aud"] == AUDIENCE
        assert claims["sub"] == users["viewer"]
        assert claims["nbf"] <= claims["iat"] + 1
    access = jwt.decode(body["access_token"], options={"verify_signature": False})
    refresh = jwt.decode(body["refresh_token"], options={"verify_signature": False})
    assert access["exp"] - access["iat"] == 3600
    assert refresh["exp"] - refresh["iat"] == 7 * 24 * 3600
    # The token verifies with the configured secret, audience and issuer (and nothing weaker).
    jwt.decode(
        body["access_token"], JWT_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
    )


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("viewer-1", "wrong password, same length"),
        ("nobody-here", PASSWORD),
        ("disabled-1", PASSWORD),
    ],
    ids=["wrong-password", "unknown-user", "disabled-user"],
)
def test_bad_credentials_get_one_identical_answer(
    app: Flask, client: FlaskClient, users: dict[str, str], username: str, password: str
) -> None:
    from app.users.service import create_user, update_user

    disabled = create_user("disabled-1", PASSWORD, ["admin"])
    update_user(disabled.id, {"disabled": True}, _admin_identity(users["admin"]))
    reference = _login(client, "viewer-1", "wrong password, same length")

    response = _login(client, username, password)

    _assert_unauthorized(response)
    body, expected = response.get_json(), reference.get_json()
    assert body.pop("request_id") != expected.pop("request_id")
    assert body == expected
    assert response.headers["Cache-Control"] == "no-store"


def _admin_identity(user_id: str) -> Any:
    from app.auth.identity import Identity
    from app.auth.permissions import permissions_of

    return Identity(user_id, "admin-1", "admin", ("admin",), permissions_of("admin"))


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"username", "password"}),
        ({"username": "viewer-1"}, {"password"}),
        ({"password": PASSWORD}, {"username"}),
        ({"username": 7, "password": PASSWORD}, {"username"}),
        ({"username": "", "password": ""}, {"username", "password"}),
    ],
)
def test_login_with_missing_or_bad_fields_is_422(
    client: FlaskClient, users: dict[str, str], body: dict[str, Any], fields: set[str]
) -> None:
    response = client.post("/v1/auth/login", json=body)

    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "VALIDATION_FAILED"
    assert set(problem["errors"]) == fields


def test_login_does_not_need_a_token_and_ignores_a_bad_one(
    client: FlaskClient, users: dict[str, str]
) -> None:
    response = client.post(
        "/v1/auth/login",
        json={"username": "viewer-1", "password": PASSWORD},
        headers={"Authorization": "Bearer garbage"},
    )

    assert response.status_code == 200


# --- /v1/auth/me -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("viewer", VIEWER_PERMISSIONS),
        ("user", USER_PERMISSIONS),
        ("developer", DEVELOPER_PERMISSIONS),
    ],
)
def test_me_expands_the_permissions_of_the_role(
    as_role: Any, users: dict[str, str], role: str, expected: set[str]
) -> None:
    response = as_role(role).get("/v1/auth/me")

    assert response.status_code == 200
    assert response.get_json() == {
        "id": users[role],
        "username": f"{role}-1",
        "roles": [role],
        "permissions": sorted(expected),
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_me_for_an_admin_lists_every_permission(admin: Any) -> None:
    body = admin.get("/v1/auth/me").get_json()

    assert body["roles"] == ["admin"]
    assert "*:*" in body["permissions"]
    assert set(body["permissions"]) >= DEVELOPER_PERMISSIONS | {"user:manage"}


def test_me_reports_roles_as_assigned_and_permissions_of_the_highest(
    app: Flask, client: FlaskClient
) -> None:
    from app.users.service import create_user

    create_user("mixed-1", PASSWORD, ["viewer", "developer"])

    body = login(client, "mixed-1").get("/v1/auth/me").get_json()

    assert body["roles"] == ["viewer", "developer"]
    assert set(body["permissions"]) == DEVELOPER_PERMISSIONS


# --- credentials -----------------------------------------------------------------------------


def test_no_credentials_is_401_with_www_authenticate(client: FlaskClient) -> None:
    _assert_unauthorized(client.get("/v1/auth/me"))


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Basic x",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Token abc",
        "bearer",
        "Bearer " + "x" * 10000,
    ],
)
def test_malformed_authorization_header_is_401(
    client: FlaskClient, users: dict[str, str], header: str
) -> None:
    _assert_unauthorized(client.get("/v1/auth/me", headers={"Authorization": header}))


def test_a_well_formed_token_is_accepted(client: FlaskClient, users: dict[str, str]) -> None:
    # The control for the forged tokens below: only the one thing they change makes them fail.
    token = _token(sub=users["viewer"])

    response = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response.get_json()["username"] == "viewer-1"


@pytest.mark.parametrize(
    "changes",
    [
        {"secret": "another-secret-" + "y" * 40},
        {"exp": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90)},
        {"nbf": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)},
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"aud": None},
        {"iss": None},
        {"exp": None},
        {"type": "refresh"},
        {"fam": None},
        {"sub": "01HZZZZZZZZZZZZZZZZZZZZZZZ"},
        {"sub": None},
        {"sub": 12345},
        {"sub": "\x00"},
    ],
    ids=[
        "other-secret",
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "no-audience",
        "no-issuer",
        "no-expiry",
        "refresh-type",
        "no-login-family",
        "unknown-user",
        "no-subject",
        "integer-subject",
        "nul-subject",
    ],
)
def test_forged_or_expired_tokens_are_401(
    client: FlaskClient, users: dict[str, str], changes: dict[str, Any]
) -> None:
    token = _token(**{"sub": users["admin"], **changes})

    _assert_unauthorized(client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"}))


def test_a_token_seen_before_is_still_refused_once_it_expires(
    client: FlaskClient, users: dict[str, str]
) -> None:
    # Its signature is verified once per process; its lifetime must be checked at every request.
    expires = int(time.time()) + 2
    token = _token(sub=users["viewer"], exp=expires)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/auth/me", headers=headers).status_code == 200

    time.sleep(max(0.0, expires - time.time()) + 0.2)

    _assert_unauthorized(client.get("/v1/auth/me", headers=headers))


def test_a_token_seen_before_is_refused_once_the_secret_changes(
    app: Flask, client: FlaskClient, users: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _token(sub=users["viewer"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/auth/me", headers=headers).status_code == 200

    monkeypatch.setitem(app.config, "JWT_SECRET_KEY", "rotated-" + "z" * 40)

    _assert_unauthorized(client.get("/v1/auth/me", headers=headers))


def test_alg_none_token_is_401(client: FlaskClient, users: dict[str, str]) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {"sub": users["admin"], "iss": ISSUER, "aud": AUDIENCE, "type": "access"}
    token = jwt.encode({**claims, "iat": now, "nbf": now, "exp": now + 300}, None, algorithm="none")

    _assert_unauthorized(client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"}))


@pytest.mark.filterwarnings("ignore:The HMAC key")
def test_hs512_token_with_the_right_secret_is_401(
    client: FlaskClient, users: dict[str, str]
) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {"sub": users["admin"], "iss": ISSUER, "aud": AUDIENCE, "type": "access"}
    token = jwt.encode(
        {**claims, "iat": now, "nbf": now, "exp": now + 300}, JWT_SECRET, algorithm="HS512"
    )

    _assert_unauthorized(client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"}))


def test_refresh_token_is_not_an_access_token(client: FlaskClient, users: dict[str, str]) -> None:
    refresh = _login(client, "admin-1", PASSWORD).get_json()["refresh_token"]

    _assert_unauthorized(client.get("/v1/auth/me", headers={"Authorization": f"Bearer {refresh}"}))


def test_credentials_are_checked_before_the_body(client: FlaskClient) -> None:
    # An anonymous caller learns nothing about the body it was not allowed to send: 401, not 422.
    response = client.post(
        "/v1/users", json={"username": 1}, headers={"Authorization": "Bearer garbage"}
    )

    _assert_unauthorized(response)


def test_disabling_a_user_revokes_their_tokens_at_once(
    app: Flask, admin: Any, as_role: Any, users: dict[str, str]
) -> None:
    developer = as_role("developer")
    assert developer.get("/v1/auth/me").status_code == 200

    assert (
        admin.patch(f"/v1/users/{users['developer']}", json={"disabled": True}).status_code == 200
    )

    _assert_unauthorized(developer.get("/v1/auth/me"))
    _assert_unauthorized(developer.get("/v1/assets"))
    assert (
        admin.patch(f"/v1/users/{users['developer']}", json={"disabled": False}).status_code == 200
    )
    assert developer.get("/v1/auth/me").status_code == 200


def test_a_demoted_admin_loses_permissions_at_once(
    app: Flask, client: FlaskClient, admin: Any, users: dict[str, str]
) -> None:
    from app.users.service import create_user

    second = create_user("admin-2", PASSWORD, ["admin"])
    other = login(client, "admin-2")
    assert other.get("/v1/users").status_code == 200

    response = admin.patch(f"/v1/users/{second.id}", json={"roles": ["viewer"]})
    assert response.status_code == 200

    denied = other.get("/v1/users")
    assert denied.status_code == 403
    assert denied.get_json()["code"] == "FORBIDDEN"
    assert other.get("/v1/auth/me").get_json()["roles"] == ["viewer"]
    assert other.get("/v1/assets").status_code == 200


def test_cache_control_no_store_only_on_auth_responses(
    client: FlaskClient, admin: Any, users: dict[str, str]
) -> None:
    assert client.get("/v1/auth/me").headers["Cache-Control"] == "no-store"  # errors too
    assert admin.get("/v1/auth/me").headers["Cache-Control"] == "no-store"
    assert "no-store" not in client.get("/health/live").headers.get("Cache-Control", "")


def test_security_headers_on_every_response(client: FlaskClient) -> None:
    for response in (client.get("/health/live"), client.get("/nope"), client.get("/v1/auth/me")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"]


# --- logs ------------------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Any:
    """The registry's JSON log lines, as the configured handler would write them."""
    root = logging.getLogger()
    registry = next(h for h in root.handlers if getattr(h, "_registry", False))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(registry.formatter)
    for log_filter in registry.filters:
        handler.addFilter(log_filter)
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield lines
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


def test_one_json_log_line_per_request(
    client: FlaskClient, admin: Any, users: dict[str, str], log_lines: Any
) -> None:
    response = admin.get(f"/v1/users/{users['viewer']}", headers={"X-Request-ID": "trace-me-123"})
    assert response.status_code == 200

    requests = [line for line in log_lines() if line.get("logger") == "registry.request"]
    assert len(requests) == 1
    line = requests[0]
    assert line["request_id"] == "trace-me-123"
    assert line["method"] == "GET"
    assert line["route"] == "/v1/users/<string:user_id>"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    assert {"timestamp", "level", "message", "trace_id"} <= set(line)
    assert users["viewer"] not in line["route"]


def test_unmatched_routes_are_logged_as_such(client: FlaskClient, log_lines: Any) -> None:
    client.get("/no/such/thing/42")

    (line,) = [line for line in log_lines() if line.get("logger") == "registry.request"]
    assert line["route"] == "unmatched"
    assert line["status"] == 404


def test_no_password_or_token_in_the_logs(
    client: FlaskClient, users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from app.users.service import create_user

    secret_password = "s3cret-Passw0rd-that-must-not-leak"
    with caplog.at_level(logging.DEBUG):
        create_user("leaky-1", secret_password, ["viewer"])
        body = _login(client, "leaky-1", secret_password).get_json()
        _login(client, "leaky-1", secret_password + "-wrong")
        me = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        client.get("/v1/auth/me", headers={"Authorization": "Bearer forged.token.value"})
    assert me.status_code == 200
    assert any(r.name == "registry.request" for r in caplog.records)

    secrets = [secret_password, body["access_token"], body["refresh_token"], "forged.token.value"]
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(map(str, vars(record).values()))
        for secret in secrets:
            assert secret not in text, record
        assert body["access_token"].split(".")[2] not in text
