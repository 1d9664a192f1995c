"""How requests use PostgreSQL connections: reads in autocommit, pings only after idleness.

On an app of its own database where every request really commits (the ``app`` fixture's
session is bound to one test connection and would hide both)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import event

import app.db
from app.auth.signing import signature_for
from app.extensions import db
from tests.conftest import PASSWORD, committing_pg_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def committing_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    var = tmp_path_factory.mktemp("connections")
    with committing_pg_app("_connections", var, "reader", "developer") as flask_app:
        yield flask_app


@pytest.fixture
def headers(committing_app: Flask) -> dict[str, str]:
    response = committing_app.test_client().post(
        "/v1/auth/login", json={"username": "reader", "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def _register(committing_app: Flask, headers: dict[str, str], version: str) -> str:
    response = committing_app.test_client().post(
        "/v1/assets",
        json={"asset_type": "model", "name": "conn/model", "version": version},
        headers=headers,
    )
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def _terminate_other_backends(committing_app: Flask) -> int:
    """Close, from the server's side, every connection of the app's pool (as a restart or a
    proxy's idle timeout would); returns how many."""
    with committing_app.app_context():
        url = db.engine.url
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    ) as admin:
        pids = [
            row[0]
            for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (url.database,),
            )
        ]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            if left == (0,):
                break
            time.sleep(0.05)
    return len(pids)


def test_reads_run_in_autocommit_and_writes_in_a_transaction(
    committing_app: Flask, headers: dict[str, str]
) -> None:
    asset_id = _register(committing_app, headers, "1.0.0")
    seen: list[tuple[str, bool, int]] = []
    with committing_app.app_context():
        engine = db.engine

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        # A registration's rows go in one WITH ... INSERT statement on PostgreSQL.
        verb = "INSERT" if "INSERT INTO" in statement else statement.split()[0].upper()
        seen.append((verb, dbapi.autocommit, id(dbapi)))

    event.listen(engine, "before_cursor_execute", record)
    try:
        client = committing_app.test_client()
        for path in (
            "/v1/assets?name=conn/model",
            f"/v1/assets/{asset_id}/dependencies",
            "/v1/assets/conn/model/versions",
        ):
            assert client.get(path, headers=headers).status_code == 200, path
        reads = list(seen)
        seen.clear()
        _register(committing_app, headers, "1.0.1")  # on the connection the reads gave back
        writes = list(seen)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert reads and all(autocommit for _verb, autocommit, _c in reads), reads
    assert {"INSERT"} <= {verb for verb, _a, _c in writes}
    assert not any(autocommit for _verb, autocommit, _c in writes), writes
    # The write ran on a connection the reads had in autocommit: the mode did not stay with it.
    assert {c for *_, c in writes} <= {c for *_, c in reads}, (reads, writes)


def test_a_connection_back_in_use_within_the_second_is_not_pinged(
    committing_app: Flask, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(committing_app, headers, "2.0.0")
    with committing_app.app_context():
        dialect = db.engine.dialect
    pings: list[float] = []
    real_ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(time.monotonic())
        return bool(real_ping(dbapi_connection))

    monkeypatch.setattr(dialect, "do_ping", counted)
    client = committing_app.test_client()
    for _ in range(5):
        assert client.get("/v1/assets?name=conn/model", headers=headers).status_code == 200
    assert pings == []  # pool_pre_ping would have sent five
    monkeypatch.setattr(app.db, "IDLE_PING_SECONDS", 0.05)
    time.sleep(0.1)
    assert client.get("/v1/assets?name=conn/model", headers=headers).status_code == 200
    assert len(pings) == 1  # idle long enough: pinged once before use


def test_a_connection_closed_while_idle_is_replaced_before_use(
    committing_app: Flask, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = committing_app.test_client()
    asset_id = _register(committing_app, headers, "3.0.0")
    assert client.get(f"/v1/assets/{asset_id}/dependencies", headers=headers).status_code == 200
    monkeypatch.setattr(app.db, "IDLE_PING_SECONDS", 0.05)
    assert _terminate_other_backends(committing_app) >= 1
    time.sleep(0.1)
    response = client.get(f"/v1/assets/{asset_id}/dependencies", headers=headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["root"] == asset_id


def test_a_connection_closed_within_the_idle_window_fails_one_request_with_503_then_recovers(
    committing_app: Flask, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trade-off of not pinging busy connections: a connection the server closed less than
    ``IDLE_PING_SECONDS`` after its last use costs the request that gets it a 503 (never a
    500); the pool then starts afresh. (The window is made long here to stand for a restart
    under load.)"""
    client = committing_app.test_client()
    asset_id = _register(committing_app, headers, "4.0.0")
    assert client.get(f"/v1/assets/{asset_id}/dependencies", headers=headers).status_code == 200
    monkeypatch.setattr(app.db, "IDLE_PING_SECONDS", 3600.0)
    assert _terminate_other_backends(committing_app) >= 1
    failed = client.get(f"/v1/assets/{asset_id}/dependencies", headers=headers)
    assert failed.status_code == 503, failed.get_json()
    assert failed.headers["Content-Type"].startswith("application/problem+json")
    again = client.get(f"/v1/assets/{asset_id}/dependencies", headers=headers)
    assert again.status_code == 200, again.get_json()


def test_gets_make_their_single_statement_writes_in_autocommit(
    committing_app: Flask, headers: dict[str, str]
) -> None:
    """A GET with a signing API key records the key's use and claims the request's signature,
    each one statement committed on its own."""
    client = committing_app.test_client()
    created = client.post(
        "/v1/auth/api-keys", json={"name": "conn", "signing": True}, headers=headers
    )
    assert created.status_code == 201, created.get_json()
    key, secret = created.get_json()["key"], created.get_json()["signing_secret"]
    path = "/v1/assets?name=conn/model"
    stamp = str(int(time.time()))
    signed = {
        "Authorization": f"Bearer {key}",
        "X-Signature-Timestamp": stamp,
        "X-Signature": signature_for(secret, "GET", path, stamp, hashlib.sha256(b"").hexdigest()),
    }
    assert client.get(path, headers=signed).status_code == 200
    replay = client.get(path, headers=signed)
    assert replay.status_code == 401, replay.get_json()  # the claim stayed
    (item,) = [
        k
        for k in client.get("/v1/auth/api-keys", headers=headers).get_json()["items"]
        if k["name"] == "conn"
    ]
    assert item["last_used_at"] is not None


def test_sessions_start_no_parallel_workers_and_stop_a_statement_after_30_s(
    committing_app: Flask,
) -> None:
    # Parallel workers cost a list page of a 1% tag more than they save (see _flask_config).
    with committing_app.app_context(), db.engine.connect() as conn:
        settings = conn.exec_driver_sql(
            "SELECT current_setting('max_parallel_workers_per_gather'), "
            "current_setting('statement_timeout')"
        ).one()
    assert tuple(settings) == ("0", "30s")
