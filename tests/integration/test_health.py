"""/health, /health/live, /health/ready and /version against real services (CONTRACT.md §8)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from app import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

PARTS = {"database", "redis", "broker", "blob_store", "nats", "outbox"}
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
CLOSED = "127.0.0.1:1"


def _client(tmp_path: Path, **env: str) -> FlaskClient:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'health.db'}", tmp_path, **env))
    with app.app_context():
        upgrade()
    return app.test_client()


def _assert_ok(check: dict[str, Any]) -> None:
    assert check["status"] == "ok", check
    assert isinstance(check["latency_ms"], float | int) and check["latency_ms"] >= 0


def _assert_error(check: dict[str, Any]) -> None:
    assert check["status"] == "error", check
    assert isinstance(check["latency_ms"], float | int)
    assert isinstance(check["message"], str) and check["message"]


def test_health_with_nothing_but_the_database(client: FlaskClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"status", "version", "checks"}
    assert body["status"] == "healthy"
    assert body["version"] == client.get("/version").get_json()["version"]
    assert set(body["checks"]) == PARTS
    _assert_ok(body["checks"]["database"])
    _assert_ok(body["checks"]["blob_store"])  # the local default is always configured
    # With no Redis the broker is the embedded SQLite one under ./var, and it is checked.
    _assert_ok(body["checks"]["broker"])
    assert "SQLite" in body["checks"]["broker"]["message"]
    for part in ("redis", "nats"):
        assert body["checks"][part] == {"status": "disabled"}
    # Without NATS the outbox keeps every event; that is the embedded default, not a fault.
    _assert_ok(body["checks"]["outbox"])
    assert "NATS not configured" in body["checks"]["outbox"]["message"]
    assert isinstance(body["checks"]["outbox"]["pending"], int)


def test_health_with_redis_and_nats(tmp_path: Path) -> None:
    response = _client(tmp_path, REDIS_URL=REDIS_URL, NATS_URL=NATS_URL).get("/health")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    for part in PARTS:
        _assert_ok(body["checks"][part])


def test_nats_down_is_degraded_but_200(tmp_path: Path) -> None:
    response = _client(tmp_path, REDIS_URL=REDIS_URL, NATS_URL=f"nats://{CLOSED}").get("/health")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded"
    _assert_error(body["checks"]["nats"])
    _assert_ok(body["checks"]["redis"])
    _assert_ok(body["checks"]["database"])


def test_a_server_that_is_not_nats_is_an_error(tmp_path: Path) -> None:
    # Redis answers on its port, but not with a NATS greeting.
    body = _client(tmp_path, NATS_URL="nats://127.0.0.1:6379").get("/health").get_json()

    assert body["status"] == "degraded"
    _assert_error(body["checks"]["nats"])


def test_redis_down_is_degraded_and_not_ready(tmp_path: Path) -> None:
    client = _client(tmp_path, REDIS_URL=f"redis://:hunter2-secret@{CLOSED}/0")

    health = client.get("/health")
    ready = client.get("/health/ready")

    assert health.status_code == 200
    assert health.get_json()["status"] == "degraded"
    _assert_error(health.get_json()["checks"]["redis"])
    _assert_error(health.get_json()["checks"]["broker"])  # the broker defaults to REDIS_URL
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "not_ready"
    # The message names the failure, never a password in the URL.
    assert "Connection" in health.get_json()["checks"]["redis"]["message"]
    assert "hunter2-secret" not in health.get_data(as_text=True)


def test_a_broker_of_its_own_is_checked(tmp_path: Path) -> None:
    client = _client(tmp_path, REDIS_URL=REDIS_URL, CELERY_BROKER_URL=f"redis://{CLOSED}/1")

    body = client.get("/health").get_json()

    _assert_ok(body["checks"]["redis"])
    _assert_error(body["checks"]["broker"])
    assert client.get("/health/ready").status_code == 503


def test_live_answers_without_dependencies(client: FlaskClient) -> None:
    response = client.get("/health/live")

    assert response.status_code == 200
    assert response.get_json()["status"] == "alive"


def test_ready_checks_database_and_broker(client: FlaskClient, tmp_path: Path) -> None:
    response = client.get("/health/ready")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    _assert_ok(body["checks"]["database"])
    _assert_ok(body["checks"]["broker"])  # the embedded SQLite broker

    with_broker = _client(tmp_path, REDIS_URL=REDIS_URL).get("/health/ready")
    assert with_broker.status_code == 200
    _assert_ok(with_broker.get_json()["checks"]["broker"])


def test_version(client: FlaskClient, app: Flask) -> None:
    from importlib import metadata

    response = client.get("/version")

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"version", "api_version", "git_sha", "build_timestamp"}
    assert body["api_version"] == "v1"
    assert body["version"] == metadata.version("llm-registry")
    assert body["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", body["git_sha"])
    assert body["build_timestamp"] is None or isinstance(body["build_timestamp"], str)


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/version"])
def test_operations_endpoints_need_no_credentials_and_ignore_bad_ones(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path, headers={"Authorization": "Bearer garbage"})

    assert response.status_code == 200
    assert response.mimetype == "application/json"


def _stale_event(app: Flask, age_seconds: float) -> None:
    """One committed, unpublished event created ``age_seconds`` ago."""
    import datetime as dt

    from app.events.models import Event
    from app.events.service import record_event
    from app.extensions import db

    with app.app_context():
        row = record_event(db.session, "asset_registered", None, {})
        row.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_seconds)
        db.session.commit()
        assert db.session.get(Event, row.id) is not None
        db.session.remove()


def test_a_stale_outbox_with_nats_configured_is_degraded(tmp_path: Path) -> None:
    client = _client(tmp_path, NATS_URL=NATS_URL)
    _stale_event(client.application, 600)

    body = client.get("/health").get_json()

    assert body["status"] == "degraded"
    outbox = body["checks"]["outbox"]
    assert outbox["status"] == "error"
    assert outbox["pending"] == 1
    assert outbox["oldest_pending_age_seconds"] >= 600
    assert "relay" in outbox["message"]
    _assert_ok(body["checks"]["nats"])


def test_a_waiting_outbox_without_nats_is_healthy(tmp_path: Path) -> None:
    client = _client(tmp_path)
    _stale_event(client.application, 600)

    body = client.get("/health").get_json()

    assert body["status"] == "healthy"
    assert body["checks"]["outbox"]["pending"] == 1
    assert body["checks"]["outbox"]["status"] == "ok"
