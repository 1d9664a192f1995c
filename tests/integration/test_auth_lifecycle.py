"""The life of a credential (CONTRACT.md §2): refresh-token rotation and reuse, forged JWTs,
logout, API keys (creation, use, listing, revocation, expiry, owner changes) and request signing.
Every test runs on PostgreSQL and SQLite through the fixtures."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.auth.signing import signature_for
from app.db import utcnow
from tests.conftest import PASSWORD
from tests.helpers import problem, sha, unique

pytestmark = pytest.mark.integration

VIEWER_PERMISSIONS = {"asset:read", "dependency:read", "job:read", "event:read"}
SIGNED_ASSET = {"asset_type": "model", "name": "acme/signed", "version": "1.0.0"}


def _login(client: FlaskClient, username: str) -> dict[str, Any]:
    response = client.post("/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _me(client: FlaskClient, token: str) -> Any:
    return client.get("/v1/auth/me", headers=_bearer(token))


def _refresh(client: FlaskClient, token: Any) -> Any:
    return client.post("/v1/auth/refresh", json={"refresh_token": token})


def _create_key(api: Any, **body: Any) -> dict[str, Any]:
    response = api.post("/v1/auth/api-keys", json={"name": "ci", **body})
    assert response.status_code == 201, response.get_json()
    doc: dict[str, Any] = response.get_json()
    return doc


def _signed_headers(
    secret: str, method: str, path: str, body: bytes = b"", timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Signature-Timestamp": ts,
        "X-Signature": signature_for(secret, method, path, ts, hashlib.sha256(body).hexdigest()),
    }


# --- refresh ---------------------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_whole_login(
    client: FlaskClient, users: dict[str, str]
) -> None:
    first = _login(client, "developer-1")
    other = _login(client, "developer-1")

    rotated = _refresh(client, first["refresh_token"])
    assert rotated.status_code == 200, rotated.get_json()
    assert rotated.headers["Cache-Control"] == "no-store"
    body = rotated.get_json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["access_token"] != first["access_token"]
    assert body["refresh_token"] != first["refresh_token"]
    me = _me(client, body["access_token"])
    assert me.status_code == 200
    assert me.get_json()["username"] == "developer-1"

    # The used refresh token again: someone holds a copy; the whole login ends.
    problem(_refresh(client, first["refresh_token"]), 401, "UNAUTHORIZED")
    problem(_me(client, body["access_token"]), 401, "UNAUTHORIZED")
    problem(_me(client, first["access_token"]), 401, "UNAUTHORIZED")
    problem(_refresh(client, body["refresh_token"]), 401, "UNAUTHORIZED")

    # Another login of the same user is untouched.
    assert _me(client, other["access_token"]).status_code == 200
    again = _refresh(client, other["refresh_token"])
    assert again.status_code == 200, again.get_json()
    assert _me(client, again.get_json()["access_token"]).status_code == 200


def test_refresh_refuses_access_tokens_garbage_and_missing_fields(
    client: FlaskClient, users: dict[str, str]
) -> None:
    tokens = _login(client, "viewer-1")
    problem(_refresh(client, tokens["access_token"]), 401, "UNAUTHORIZED")
    problem(_refresh(client, "garbage"), 401, "UNAUTHORIZED")
    problem(_refresh(client, "a.b.c"), 401, "UNAUTHORIZED")
    problem(client.post("/v1/auth/refresh", json={}), 422, "VALIDATION_FAILED")
    # The access token was not consumed nor the login revoked by those attempts.
    assert _me(client, tokens["access_token"]).status_code == 200
    assert _refresh(client, tokens["refresh_token"]).status_code == 200


# --- forged JWTs -------------------------------------------------------------------------------


def _claims(app: Flask, user_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": user_id,
        "iss": app.config["JWT_DECODE_ISSUER"],
        "aud": app.config["JWT_DECODE_AUDIENCE"],
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "forged-jti",
        "type": "access",
        "fam": "forgedfamily",
        "fresh": False,
    }
    claims.update(changes)
    return claims


@pytest.mark.parametrize(
    "kind",
    [
        "alg-none",
        "other-secret",
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "not-yet-valid",
        "hs512",
        "no-exp",
    ],
)
def test_forged_jwts_are_refused(client: FlaskClient, users: dict[str, str], kind: str) -> None:
    app = client.application
    secret = str(app.config["JWT_SECRET_KEY"])
    user_id = users["admin"]
    if kind == "alg-none":
        token = jwt.encode(_claims(app, user_id), None, algorithm="none")
    elif kind == "other-secret":
        token = jwt.encode(_claims(app, user_id), "another-secret-" + "y" * 40, algorithm="HS256")
    elif kind == "expired":
        now = int(time.time())
        claims = _claims(app, user_id, iat=now - 7200, nbf=now - 7200, exp=now - 3600)
        token = jwt.encode(claims, secret, algorithm="HS256")
    elif kind == "wrong-audience":
        token = jwt.encode(_claims(app, user_id, aud="someone-else"), secret, algorithm="HS256")
    elif kind == "not-yet-valid":
        later = int(time.time()) + 3600
        claims = _claims(app, user_id, nbf=later, exp=later + 300)
        token = jwt.encode(claims, secret, algorithm="HS256")
    elif kind == "hs512":  # the right secret, another algorithm: HS256 is pinned
        token = jwt.encode(_claims(app, user_id), secret, algorithm="HS512")
    elif kind == "no-exp":  # a token that would never expire is not one we issue
        claims = _claims(app, user_id)
        del claims["exp"]
        token = jwt.encode(claims, secret, algorithm="HS256")
    else:
        token = jwt.encode(_claims(app, user_id, iss="someone-else"), secret, algorithm="HS256")

    problem(_me(client, token), 401, "UNAUTHORIZED")


def test_the_forged_jwt_baseline_is_accepted(client: FlaskClient, users: dict[str, str]) -> None:
    # The control for the test above: the same claims, properly signed, are accepted, so each
    # refusal there is due to the one thing changed.
    app = client.application
    token = jwt.encode(
        _claims(app, users["admin"]), str(app.config["JWT_SECRET_KEY"]), algorithm="HS256"
    )
    response = _me(client, token)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["username"] == "admin-1"


# --- logout ------------------------------------------------------------------------------------


def test_logout_ends_that_login_only(client: FlaskClient, users: dict[str, str]) -> None:
    tokens = _login(client, "developer-1")
    other = _login(client, "developer-1")

    response = client.post("/v1/auth/logout", headers=_bearer(tokens["access_token"]))
    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Cache-Control"] == "no-store"

    problem(_me(client, tokens["access_token"]), 401, "UNAUTHORIZED")
    problem(_refresh(client, tokens["refresh_token"]), 401, "UNAUTHORIZED")
    problem(
        client.post("/v1/auth/logout", headers=_bearer(tokens["access_token"])),
        401,
        "UNAUTHORIZED",
    )
    assert _me(client, other["access_token"]).status_code == 200
    assert _refresh(client, other["refresh_token"]).status_code == 200


def test_logout_with_an_api_key_changes_nothing(client: FlaskClient, dev: Any) -> None:
    key = _create_key(dev)["key"]
    response = client.post("/v1/auth/logout", headers=_bearer(key))
    assert response.status_code == 204
    assert _me(client, key).status_code == 200
    assert dev.get("/v1/auth/me").status_code == 200


# --- API keys ----------------------------------------------------------------------------------


def test_developer_creates_a_key_with_the_owner_role(client: FlaskClient, dev: Any) -> None:
    response = dev.post("/v1/auth/api-keys", json={"name": "ci"})
    assert response.status_code == 201, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert {"id", "name", "key", "prefix", "role", "created_at", "expires_at"} <= set(body)
    assert "signing_secret" not in body
    key = body["key"]
    assert key.startswith("llmr_")
    assert "." not in key
    assert body["prefix"] == key[:12]
    assert body["role"] == "developer"
    assert body["name"] == "ci"
    assert body["expires_at"] is None


@pytest.mark.parametrize("role", ["viewer", "user"])
def test_viewer_and_user_may_not_create_keys(as_role: Any, role: str) -> None:
    problem(as_role(role).post("/v1/auth/api-keys", json={"name": "ci"}), 403, "FORBIDDEN")


def test_a_key_role_above_the_owner_is_403(dev: Any) -> None:
    response = dev.post("/v1/auth/api-keys", json={"name": "ci", "role": "admin"})
    problem(response, 403, "FORBIDDEN")
    assert dev.get("/v1/auth/api-keys").get_json()["items"] == []


def test_a_key_works_as_bearer_and_as_x_api_key(client: FlaskClient, dev: Any) -> None:
    key = _create_key(dev)["key"]
    for headers in (_bearer(key), {"X-API-Key": key}):
        response = client.get("/v1/auth/me", headers=headers)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["username"] == "developer-1"
        assert response.get_json()["roles"] == ["developer"]


def test_a_viewer_key_of_a_developer_acts_as_viewer(client: FlaskClient, dev: Any) -> None:
    created = _create_key(dev, role="viewer")
    assert created["role"] == "viewer"
    headers = _bearer(created["key"])

    me = client.get("/v1/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.get_json()["roles"] == ["developer"]  # as assigned to the owner
    assert set(me.get_json()["permissions"]) == VIEWER_PERMISSIONS
    problem(client.post("/v1/assets", json=SIGNED_ASSET, headers=headers), 403, "FORBIDDEN")
    assert client.get("/v1/assets", headers=headers).status_code == 200
    # The owner's own token still registers.
    assert dev.post("/v1/assets", json=SIGNED_ASSET).status_code == 202


def test_listing_shows_no_secrets_and_last_used_after_use(client: FlaskClient, dev: Any) -> None:
    created = _create_key(dev, signing=False)
    listed = dev.get("/v1/auth/api-keys")
    assert listed.status_code == 200
    (item,) = listed.get_json()["items"]
    assert item["id"] == created["id"]
    assert item["prefix"] == created["prefix"]
    assert item["last_used_at"] is None
    assert "key" not in item and "signing_secret" not in item
    assert created["key"] not in listed.get_data(as_text=True)

    assert client.get("/v1/auth/me", headers=_bearer(created["key"])).status_code == 200
    (item,) = dev.get("/v1/auth/api-keys").get_json()["items"]
    assert item["last_used_at"] is not None


def test_deleting_a_key_revokes_it(client: FlaskClient, dev: Any) -> None:
    created = _create_key(dev)
    assert client.get("/v1/auth/me", headers=_bearer(created["key"])).status_code == 200
    response = dev.delete(f"/v1/auth/api-keys/{created['id']}")
    assert response.status_code == 204
    problem(client.get("/v1/auth/me", headers=_bearer(created["key"])), 401, "UNAUTHORIZED")
    problem(client.get("/v1/auth/me", headers={"X-API-Key": created["key"]}), 401, "UNAUTHORIZED")
    assert dev.get("/v1/auth/api-keys").get_json()["items"] == []


def test_deleting_someone_elses_key_is_404(client: FlaskClient, dev: Any, as_role: Any) -> None:
    created = _create_key(dev)
    other = as_role("user")
    problem(other.delete(f"/v1/auth/api-keys/{created['id']}"), 404, "NOT_FOUND")
    problem(dev.delete("/v1/auth/api-keys/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 404, "NOT_FOUND")
    assert client.get("/v1/auth/me", headers=_bearer(created["key"])).status_code == 200


def test_an_expired_key_is_401(client: FlaskClient, dev: Any) -> None:
    from app.auth.models import ApiKey
    from app.extensions import db

    created = _create_key(dev, expires_in_days=1)
    assert created["expires_at"] is not None
    assert client.get("/v1/auth/me", headers=_bearer(created["key"])).status_code == 200

    row = db.session.get(ApiKey, created["id"])
    assert row is not None
    row.expires_at = utcnow() - dt.timedelta(seconds=5)
    db.session.commit()

    problem(client.get("/v1/auth/me", headers=_bearer(created["key"])), 401, "UNAUTHORIZED")


def test_demoting_the_owner_demotes_the_key_at_once(
    client: FlaskClient, dev: Any, admin: Any, users: dict[str, str]
) -> None:
    created = _create_key(dev)
    headers = _bearer(created["key"])
    before = client.post(
        "/v1/assets", json={**SIGNED_ASSET, "name": "acme/before"}, headers=headers
    )
    assert before.status_code == 202, before.get_json()

    demoted = admin.patch(f"/v1/users/{users['developer']}", json={"roles": ["viewer"]})
    assert demoted.status_code == 200, demoted.get_json()

    problem(client.post("/v1/assets", json=SIGNED_ASSET, headers=headers), 403, "FORBIDDEN")
    me = client.get("/v1/auth/me", headers=headers).get_json()
    assert set(me["permissions"]) == VIEWER_PERMISSIONS


def test_disabling_the_owner_disables_the_key(
    client: FlaskClient, dev: Any, admin: Any, users: dict[str, str]
) -> None:
    created = _create_key(dev)
    assert client.get("/v1/auth/me", headers=_bearer(created["key"])).status_code == 200
    response = admin.patch(f"/v1/users/{users['developer']}", json={"disabled": True})
    assert response.status_code == 200, response.get_json()
    problem(client.get("/v1/auth/me", headers=_bearer(created["key"])), 401, "UNAUTHORIZED")
    problem(client.get("/v1/auth/me", headers={"X-API-Key": created["key"]}), 401, "UNAUTHORIZED")


# --- request signing ---------------------------------------------------------------------------


@pytest.fixture
def signing_key(dev: Any) -> dict[str, Any]:
    return _create_key(dev, signing=True)


def test_a_signing_key_shows_its_secret_once(dev: Any, signing_key: dict[str, Any]) -> None:
    secret = signing_key["signing_secret"]
    assert isinstance(secret, str) and len(secret) >= 32
    assert signing_key["signing"] is True
    listed = dev.get("/v1/auth/api-keys")
    (item,) = listed.get_json()["items"]
    assert item["signing"] is True
    assert "signing_secret" not in item
    assert secret not in listed.get_data(as_text=True)


def test_signed_get_is_accepted_once(client: FlaskClient, signing_key: dict[str, Any]) -> None:
    key, secret = signing_key["key"], signing_key["signing_secret"]
    path = "/v1/assets?limit=2"

    problem(client.get(path, headers=_bearer(key)), 401, "UNAUTHORIZED")

    headers = {**_bearer(key), **_signed_headers(secret, "GET", path)}
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_json()

    problem(client.get(path, headers=headers), 401, "UNAUTHORIZED")  # replay


def test_signed_get_also_works_with_x_api_key(
    client: FlaskClient, signing_key: dict[str, Any]
) -> None:
    path = "/v1/assets?limit=2"
    headers = {
        "X-API-Key": signing_key["key"],
        **_signed_headers(signing_key["signing_secret"], "GET", path),
    }
    assert client.get(path, headers=headers).status_code == 200


@pytest.mark.parametrize("flaw", ["wrong-signature", "stale", "future", "other-path", "bad-ts"])
def test_badly_signed_requests_are_401(
    client: FlaskClient, signing_key: dict[str, Any], flaw: str
) -> None:
    key, secret = signing_key["key"], signing_key["signing_secret"]
    path = "/v1/assets?limit=2"
    now = int(time.time())
    if flaw == "wrong-signature":
        headers = _signed_headers("0" * 64, "GET", path)
    elif flaw == "stale":
        headers = _signed_headers(secret, "GET", path, timestamp=now - 301)
    elif flaw == "future":
        headers = _signed_headers(secret, "GET", path, timestamp=now + 301)
    elif flaw == "other-path":
        headers = _signed_headers(secret, "GET", "/v1/assets?limit=3")
    else:
        headers = {**_signed_headers(secret, "GET", path), "X-Signature-Timestamp": "soon"}
    problem(client.get(path, headers={**_bearer(key), **headers}), 401, "UNAUTHORIZED")


def test_signed_json_post_is_accepted(client: FlaskClient, signing_key: dict[str, Any]) -> None:
    key, secret = signing_key["key"], signing_key["signing_secret"]
    body = json.dumps(SIGNED_ASSET).encode()
    headers = {**_bearer(key), **_signed_headers(secret, "POST", "/v1/assets", body)}
    response = client.post(
        "/v1/assets", data=body, content_type="application/json", headers=headers
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["name"] == "acme/signed"

    # Other bytes under the same signature are refused.
    tampered = json.dumps({**SIGNED_ASSET, "version": "2.0.0"}).encode()
    fresh = {**_bearer(key), **_signed_headers(secret, "POST", "/v1/assets", body)}
    fresh["X-Signature-Timestamp"] = str(int(fresh["X-Signature-Timestamp"]) - 1)
    fresh["X-Signature"] = signature_for(
        secret, "POST", "/v1/assets", fresh["X-Signature-Timestamp"], sha(body)
    )
    response = client.post(
        "/v1/assets", data=tampered, content_type="application/json", headers=fresh
    )
    problem(response, 401, "UNAUTHORIZED")


def test_signed_blob_upload_is_checked_on_the_body(
    client: FlaskClient, dev: Any, signing_key: dict[str, Any]
) -> None:
    key, secret = signing_key["key"], signing_key["signing_secret"]

    good = unique(256)
    headers = {**_bearer(key), **_signed_headers(secret, "POST", "/v1/blobs", good)}
    response = client.post(
        "/v1/blobs", data=good, content_type="application/octet-stream", headers=headers
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["digest"] == f"sha256:{sha(good)}"

    bad = unique(256)
    headers = {**_bearer(key), **_signed_headers(secret, "POST", "/v1/blobs", unique(256))}
    response = client.post(
        "/v1/blobs", data=bad, content_type="application/octet-stream", headers=headers
    )
    problem(response, 401, "UNAUTHORIZED")
    problem(dev.get(f"/v1/blobs/sha256:{sha(bad)}"), 404, "NOT_FOUND")
    assert dev.get(f"/v1/blobs/sha256:{sha(good)}").get_data() == good


# --- headers -----------------------------------------------------------------------------------


def test_auth_responses_carry_no_store(client: FlaskClient, dev: Any) -> None:
    tokens = _login(client, "developer-1")
    responses = [
        client.post(
            "/v1/auth/login", json={"username": "developer-1", "password": "wrong password"}
        ),
        _refresh(client, tokens["refresh_token"]),
        _refresh(client, "garbage"),
        dev.get("/v1/auth/me"),
        dev.get("/v1/auth/api-keys"),
        dev.post("/v1/auth/api-keys", json={"name": "ci"}),
        client.post("/v1/auth/logout", headers=_bearer(tokens["access_token"])),
    ]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.path
