"""Rate limits, CORS, security headers and body-size limits as a client sees them
(CONTRACT.md §2, with the degraded operation of §8).

Every test builds its own app (rate limiting on, a small budget) on a SQLite file of its own;
the Redis tests take a Redis database number of their own. A Redis that does not answer fails
the test, it never turns into a skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from app import MAX_JSON_BYTES, create_app
from app.users.service import create_user
from config import ConfigError, load_settings
from tests.conftest import JWT_SECRET, PASSWORD, login, make_settings
from tests.integration.pipeline_support import claim_redis_db, release_redis_db

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
DEAD_REDIS = "redis://127.0.0.1:1/0"


def _db_url(var: Path) -> str:
    return f"sqlite:///{var / 'registry.db'}"


def _migrate(app: Flask, usernames: tuple[str, ...] = ("u1", "u2")) -> Flask:
    with app.app_context():
        upgrade()
        for name in usernames:
            create_user(name, PASSWORD, ["viewer"])
    return app


def build_app(var: Path, *, usernames: tuple[str, ...] = ("u1", "u2"), **env: str) -> Flask:
    """A migrated app with rate limiting on (unless ``env`` says otherwise) and viewers."""
    settings = make_settings(_db_url(var), var, **{"RATE_LIMIT_ENABLED": "true", **env})
    return _migrate(create_app(settings), usernames)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(client: FlaskClient, username: str, **kw: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/auth/login", json={"username": username, "password": PASSWORD}, **kw
    )
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def assert_rate_limited(response: Any) -> None:
    """429 RATE_LIMIT_EXCEEDED problem with Retry-After (integer seconds > 0)."""
    assert response.status_code == 429, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["status"] == 429
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), retry_after
    assert int(retry_after) > 0


@pytest.fixture
def redis_db() -> Iterator[str]:
    url = claim_redis_db()
    try:
        yield url
    finally:
        release_redis_db(url)


# --- 1. the budget --------------------------------------------------------------------------


def test_budget_headers_countdown_and_429(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="5", RATE_LIMIT_WINDOW_SECS="60")
    client = app.test_client()
    api = login(client, "u1")

    remaining = []
    for i in range(5):
        # /v1/assets and /v1/jobs draw from one counter
        response = api.get("/v1/assets" if i % 2 == 0 else "/v1/jobs")
        assert response.status_code == 200, response.get_json()
        for name in RATE_HEADERS:
            assert name in response.headers, (name, dict(response.headers))
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert "Retry-After" not in response.headers
        reset = int(response.headers["X-RateLimit-Reset"])
        assert time.time() - 1 <= reset <= time.time() + 61
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]

    for path in ("/v1/assets", "/v1/jobs", "/v1/auth/me"):
        over = api.get(path)
        assert_rate_limited(over)
        assert over.headers["X-RateLimit-Limit"] == "5"
        assert over.headers["X-RateLimit-Remaining"] == "0"
        reset = int(over.headers["X-RateLimit-Reset"])
        assert reset > time.time() - 1  # unix seconds, not a delta
        assert reset <= time.time() + 61
        assert int(over.headers["Retry-After"]) <= 60


# --- 2. per identity ------------------------------------------------------------------------


def test_each_user_has_its_own_budget_from_one_address(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="3")
    client = app.test_client()
    first, second = login(client, "u1"), login(client, "u2")

    for _ in range(3):
        assert first.get("/v1/assets").status_code == 200
    assert_rate_limited(first.get("/v1/assets"))
    # u1 is out of budget, u2 (same address) still has all of its own
    for expected in (2, 1, 0):
        response = second.get("/v1/assets")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == str(expected)
    assert_rate_limited(second.get("/v1/jobs"))


def test_anonymous_callers_are_limited_per_address(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="3")
    client = app.test_client()
    here = {"REMOTE_ADDR": "10.1.1.1"}
    there = {"REMOTE_ADDR": "10.2.2.2"}

    for _ in range(3):
        assert client.get("/v1/assets", environ_base=here).status_code == 401
    assert_rate_limited(client.get("/v1/assets", environ_base=here))
    # A bad credential is no identity: still this address's budget.
    assert_rate_limited(client.get("/v1/assets", headers=bearer("not.a.jwt"), environ_base=here))
    response = client.get("/v1/assets", environ_base=there)
    assert response.status_code == 401
    assert response.headers["X-RateLimit-Remaining"] == "2"


def test_trusted_proxy_forwarded_addresses_get_separate_budgets(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="2", TRUSTED_PROXIES="1")
    client = app.test_client()
    one = {"X-Forwarded-For": "203.0.113.1"}
    two = {"X-Forwarded-For": "203.0.113.2"}

    for _ in range(2):
        assert client.get("/v1/assets", headers=one).status_code == 401
    assert_rate_limited(client.get("/v1/assets", headers=one))
    for _ in range(2):
        assert client.get("/v1/assets", headers=two).status_code == 401
    assert_rate_limited(client.get("/v1/assets", headers=two))


def test_untrusted_forwarded_for_is_ignored(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="2")  # TRUSTED_PROXIES=0, the default
    client = app.test_client()

    assert client.get("/v1/assets", headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 401
    assert client.get("/v1/assets", headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 401
    assert_rate_limited(client.get("/v1/assets", headers={"X-Forwarded-For": "203.0.113.3"}))


# --- 3. never limited -----------------------------------------------------------------------


def test_health_metrics_docs_and_version_are_never_limited(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="2")
    client = app.test_client()
    paths = ("/health", "/health/live", "/health/ready", "/metrics", "/openapi.json", "/version")
    for path in paths:
        for _ in range(6):
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            assert "Retry-After" not in response.headers
    # ... and none of it was taken from the caller's /v1 budget
    response = client.get("/v1/assets")
    assert response.status_code == 401
    assert response.headers["X-RateLimit-Remaining"] == "1"


# --- 4. off ---------------------------------------------------------------------------------


def test_rate_limiting_disabled(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_ENABLED="false", RATE_LIMIT_MAX_REQUESTS="2")
    client = app.test_client()
    api = login(client, "u1")
    for _ in range(15):
        for response in (api.get("/v1/assets"), client.get("/v1/jobs")):
            assert response.status_code in (200, 401)
            for name in (*RATE_HEADERS, "Retry-After"):
                assert name not in response.headers


# --- 5. per-endpoint overrides --------------------------------------------------------------


def _settings_from_toml(var: Path, toml: str, **env: str) -> Any:
    config_file = var / "registry.toml"
    config_file.write_text(toml)
    environ = {
        "REGISTRY_ENV": "production",
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": _db_url(var),
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_ENABLED": "true",
        **env,
    }
    return load_settings(config_file, environ=environ, overrides={"var_dir": str(var)})


def test_per_endpoint_override_from_config_file(tmp_path: Path) -> None:
    settings = _settings_from_toml(
        tmp_path,
        "[rate_limits]\n"
        '"GET /v1/jobs" = "2 per minute"\n'
        '"GET /v1/jobs/{job_id}" = "1 per minute"\n',
        RATE_LIMIT_MAX_REQUESTS="5",
    )
    app = _migrate(create_app(settings))
    client = app.test_client()
    api = login(client, "u1")

    for expected in ("1", "0"):
        response = api.get("/v1/jobs")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "2"
        assert response.headers["X-RateLimit-Remaining"] == expected
    over = api.get("/v1/jobs")
    assert_rate_limited(over)
    assert over.headers["X-RateLimit-Limit"] == "2"

    # the template is the endpoint: two different ids share its one request
    assert api.get("/v1/jobs/does-not-exist").status_code == 404
    assert_rate_limited(api.get("/v1/jobs/another-one"))

    # the rest of /v1 still has the whole global budget
    for expected in range(4, -1, -1):
        response = api.get("/v1/assets")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(expected)
    assert_rate_limited(api.get("/v1/assets"))


@pytest.mark.parametrize(
    "table",
    [
        '"GET /v1/jobs" = "lots"',
        '"FETCH /v1/x" = "2 per minute"',
        '"GET /health" = "2 per minute"',
        '"/v1/jobs" = "2 per minute"',
    ],
)
def test_malformed_override_is_a_config_error(tmp_path: Path, table: str) -> None:
    with pytest.raises(ConfigError, match="rate_limits"):
        _settings_from_toml(tmp_path, f"[rate_limits]\n{table}\n")


# --- 6. failed logins per username ----------------------------------------------------------


def test_failed_logins_are_throttled_per_username(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="1000", TRUSTED_PROXIES="1")
    client = app.test_client()
    for i in range(10):
        response = client.post(
            "/v1/auth/login",
            json={"username": "u1", "password": "wrong"},
            headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
        )
        assert response.status_code == 401, response.get_json()

    blocked = client.post(
        "/v1/auth/login",
        json={"username": "u1", "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.200"},
    )
    assert_rate_limited(blocked)
    assert int(blocked.headers["Retry-After"]) <= 300
    assert "access_token" not in blocked.get_json()

    # another username, from an address that took part in the guessing, is not affected
    token_of(client, "u2", headers={"X-Forwarded-For": "198.51.100.1"})


# --- 7. shared through Redis, and Redis down ------------------------------------------------


def test_replicas_share_one_budget_through_redis(tmp_path: Path, redis_db: str) -> None:
    env = {"REDIS_URL": redis_db, "RATE_LIMIT_MAX_REQUESTS": "4"}
    replica_a = build_app(tmp_path, **env).test_client()
    replica_b = build_app(tmp_path, usernames=(), **env).test_client()
    token = token_of(replica_a, "u1")["access_token"]

    remaining = []
    for i in range(4):
        client = replica_a if i % 2 == 0 else replica_b
        response = client.get("/v1/assets", headers=bearer(token))
        assert response.status_code == 200
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["3", "2", "1", "0"]
    assert_rate_limited(replica_a.get("/v1/assets", headers=bearer(token)))
    assert_rate_limited(replica_b.get("/v1/jobs", headers=bearer(token)))

    # failed logins are counted across replicas too
    for i in range(10):
        replica = replica_a if i % 2 else replica_b
        bad = replica.post("/v1/auth/login", json={"username": "u2", "password": "wrong"})
        assert bad.status_code in (401, 429)
    blocked = replica_a.post("/v1/auth/login", json={"username": "u2", "password": PASSWORD})
    assert_rate_limited(blocked)


def test_unreachable_redis_lets_requests_through(tmp_path: Path) -> None:
    app = build_app(tmp_path, REDIS_URL=DEAD_REDIS, RATE_LIMIT_MAX_REQUESTS="2")
    client = app.test_client()
    token = token_of(client, "u1")["access_token"]
    for _ in range(6):
        for path in ("/v1/assets", "/v1/jobs"):
            started = time.monotonic()
            response = client.get(path, headers=bearer(token))
            assert response.status_code == 200, (path, response.status_code)
            assert time.monotonic() - started < 10
    for _ in range(3):  # anonymous too
        assert client.get("/v1/assets").status_code == 401
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json()["status"] == "degraded"


# --- 8. revocation state in Redis -----------------------------------------------------------


def test_revocation_through_redis_is_seen_by_every_replica(tmp_path: Path, redis_db: str) -> None:
    env = {"REDIS_URL": redis_db, "RATE_LIMIT_ENABLED": "false"}
    replica_a = build_app(tmp_path, **env).test_client()
    replica_b = build_app(tmp_path, usernames=(), **env).test_client()
    store = redis.Redis.from_url(redis_db, socket_connect_timeout=3)

    # logout on A ends the login on A and on B
    tokens = token_of(replica_a, "u1")
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    assert replica_b.get("/v1/auth/me", headers=bearer(access)).status_code == 200
    assert replica_a.post("/v1/auth/logout", headers=bearer(access)).status_code == 204
    assert replica_a.get("/v1/auth/me", headers=bearer(access)).status_code == 401
    gone = replica_b.get("/v1/auth/me", headers=bearer(access))
    assert gone.status_code == 401
    assert gone.get_json()["code"] == "UNAUTHORIZED"
    assert replica_b.post("/v1/auth/refresh", json={"refresh_token": refresh}).status_code == 401
    assert store.keys("llm-registry:auth:family:*"), "the logout was not recorded in Redis"

    # a refresh token presented twice (once on each replica) revokes the whole login
    tokens = token_of(replica_b, "u1")
    first_access, first_refresh = tokens["access_token"], tokens["refresh_token"]
    rotated = replica_a.post("/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert rotated.status_code == 200
    new_access = rotated.get_json()["access_token"]
    new_refresh = rotated.get_json()["refresh_token"]
    assert replica_b.get("/v1/auth/me", headers=bearer(new_access)).status_code == 200
    reused = replica_b.post("/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert reused.status_code == 401
    for client in (replica_a, replica_b):
        assert client.get("/v1/auth/me", headers=bearer(new_access)).status_code == 401
        assert client.get("/v1/auth/me", headers=bearer(first_access)).status_code == 401
    again = replica_a.post("/v1/auth/refresh", json={"refresh_token": new_refresh})
    assert again.status_code == 401

    # other logins of the same user are untouched
    other = token_of(replica_a, "u1")["access_token"]
    assert replica_b.get("/v1/auth/me", headers=bearer(other)).status_code == 200
    store.close()


# --- 9. CORS --------------------------------------------------------------------------------

ORIGIN = "https://ui.example"


def _split(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


def test_cors_preflight_and_exposed_headers(tmp_path: Path) -> None:
    app = build_app(tmp_path, CORS_ALLOWED_ORIGINS=ORIGIN, RATE_LIMIT_MAX_REQUESTS="3")
    client = app.test_client()
    preflight_headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    for _ in range(5):  # no credentials, and never rate limited
        preflight = client.options("/v1/assets", headers=preflight_headers)
        assert preflight.status_code in (200, 204), preflight.get_data(as_text=True)
        assert preflight.headers.get("Access-Control-Allow-Origin") == ORIGIN
        allowed = _split(preflight.headers.get("Access-Control-Allow-Headers"))
        assert {"authorization", "content-type"} <= allowed
        assert "post" in _split(preflight.headers.get("Access-Control-Allow-Methods"))

    api = login(client, "u1")
    response = api.get("/v1/assets", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN
    exposed = _split(response.headers.get("Access-Control-Expose-Headers"))
    expected = {"etag", "location", "x-request-id", "retry-after", *map(str.lower, RATE_HEADERS)}
    assert expected <= exposed, exposed

    # a browser can read the 429 and its Retry-After too
    api.get("/v1/assets")
    api.get("/v1/assets")
    over = api.get("/v1/assets", headers={"Origin": ORIGIN})
    assert_rate_limited(over)
    assert over.headers.get("Access-Control-Allow-Origin") == ORIGIN

    # an origin not on the list gets no permission
    foreign = {**preflight_headers, "Origin": "https://evil.example"}
    assert (
        "Access-Control-Allow-Origin" not in client.options("/v1/assets", headers=foreign).headers
    )
    other = client.get("/v1/auth/me", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_headers_without_allowed_origins(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    client = app.test_client()
    api = login(client, "u1")
    responses = [
        client.options(
            "/v1/assets",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization",
            },
        ),
        api.get("/v1/assets", headers={"Origin": ORIGIN}),
        client.get("/health", headers={"Origin": ORIGIN}),
    ]
    for response in responses:
        cors = [
            name
            for name, _value in response.headers.items()
            if name.lower().startswith("access-control")
        ]
        assert cors == [], cors


# --- 10. security headers -------------------------------------------------------------------


def _assert_security_headers(response: Any) -> None:
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("X-Frame-Options") == "DENY"
    assert response.headers.get("Referrer-Policy")


def test_security_headers_on_every_response(tmp_path: Path) -> None:
    app = build_app(tmp_path, RATE_LIMIT_MAX_REQUESTS="2")
    client = app.test_client()
    ok = client.get("/health")
    not_found = client.get("/v1/no-such-thing")
    unauthorized = client.get("/v1/assets")
    client.get("/v1/assets")
    limited = client.get("/v1/assets")
    assert (ok.status_code, not_found.status_code, unauthorized.status_code) == (200, 404, 401)
    assert limited.status_code == 429
    for response in (ok, not_found, unauthorized, limited):
        _assert_security_headers(response)
        assert "Strict-Transport-Security" not in response.headers


def test_hsts_only_over_tls(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    client = app.test_client()
    for path, status in (("/health", 200), ("/v1/assets", 401), ("/v1/nope", 404)):
        secure = client.get(path, base_url="https://localhost")
        assert secure.status_code == status
        assert "max-age=" in secure.headers.get("Strict-Transport-Security", "")
        _assert_security_headers(secure)
        plain = client.get(path)
        assert "Strict-Transport-Security" not in plain.headers
    # an untrusted X-Forwarded-Proto does not make a request secure
    spoofed = client.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in spoofed.headers


def test_hsts_behind_a_trusted_tls_proxy(tmp_path: Path) -> None:
    app = build_app(tmp_path, TRUSTED_PROXIES="1")
    client = app.test_client()
    proxied = client.get(
        "/health", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.9"}
    )
    assert "max-age=" in proxied.headers.get("Strict-Transport-Security", "")
    plain = client.get("/health", headers={"X-Forwarded-Proto": "http"})
    assert "Strict-Transport-Security" not in plain.headers


def test_auth_responses_are_not_cached(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    client = app.test_client()
    response = client.post("/v1/auth/login", json={"username": "u1", "password": PASSWORD})
    assert response.status_code == 200
    assert "no-store" in response.headers.get("Cache-Control", "")
    tokens = response.get_json()
    refreshed = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    assert "no-store" in refreshed.headers.get("Cache-Control", "")
    _assert_security_headers(refreshed)


# --- 11. body size --------------------------------------------------------------------------


def test_oversize_json_body_is_413(tmp_path: Path) -> None:
    app = build_app(tmp_path, usernames=())
    with app.app_context():
        create_user("writer", PASSWORD, ["user"])
    client = app.test_client()
    api = login(client, "writer")
    body = b'{"name": "big", "padding": "' + b"x" * MAX_JSON_BYTES + b'"}'
    response = api.post("/v1/assets", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "PAYLOAD_TOO_LARGE"
    _assert_security_headers(response)
    # the same login still works afterwards
    assert api.get("/v1/assets").status_code == 200
