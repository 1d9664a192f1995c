"""Concurrent registrations on PostgreSQL with real commits: exactly one of several identical
registrations wins, and a name's type is settled by whichever first registration commits."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask

from app.extensions import db
from tests.conftest import PASSWORD, committing_pg_app

pytestmark = pytest.mark.integration
THREADS = 8


@pytest.fixture(scope="module")
def committing_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app on its own database where every request really commits."""
    var = tmp_path_factory.mktemp("concurrency")
    with committing_pg_app("_concurrency", var, "racer", "developer") as flask_app:
        yield flask_app


def _token(app: Flask) -> str:
    response = app.test_client().post(
        "/v1/auth/login", json={"username": "racer", "password": PASSWORD}
    )
    return str(response.get_json()["access_token"])


def _race(app: Flask, bodies: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    token = _token(app)
    barrier = threading.Barrier(len(bodies))
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def post(body: dict[str, Any]) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(
            "/v1/assets", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        with lock:
            results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=post, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == len(bodies)
    return results


def test_identical_registrations_exactly_one_wins(committing_app: Flask) -> None:
    body = {"asset_type": "model", "name": "race/identical", "version": "1.0.0"}
    results = _race(committing_app, [body] * THREADS)
    statuses = Counter(status for status, _ in results)
    assert statuses == {202: 1, 409: THREADS - 1}, results
    winner = next(doc for status, doc in results if status == 202)
    for status, doc in results:
        if status == 409:
            assert doc["code"] == "ALREADY_EXISTS"
            assert doc["asset_id"] == winner["id"]


def test_build_metadata_variants_race_to_one_winner(committing_app: Flask) -> None:
    bodies = [
        {"asset_type": "model", "name": "race/build", "version": f"2.0.0+build.{i}"}
        for i in range(THREADS)
    ]
    statuses = Counter(status for status, _ in _race(committing_app, bodies))
    assert statuses == {202: 1, 409: THREADS - 1}


def test_first_registration_of_a_name_settles_its_type(committing_app: Flask) -> None:
    types = ["model", "dataset"] * (THREADS // 2)
    bodies = [
        {"asset_type": t, "name": "race/typed", "version": f"1.0.{i}"} for i, t in enumerate(types)
    ]
    results = _race(committing_app, bodies)
    winners = {doc["asset_type"] for status, doc in results if status == 202}
    assert len(winners) == 1, results
    won = winners.pop()
    for status, doc in results:
        if status == 409:
            assert doc["code"] == "ALREADY_EXISTS"
            assert won in doc["detail"]
    assert sum(1 for status, _ in results if status == 202) == THREADS // 2


def test_different_versions_of_one_name_all_register(committing_app: Flask) -> None:
    bodies = [
        {"asset_type": "pipeline", "name": "race/versions", "version": f"0.{i}.0"}
        for i in range(THREADS)
    ]
    results = _race(committing_app, bodies)
    assert [status for status, _ in results] == [202] * THREADS
    listing = committing_app.test_client().get(
        "/v1/assets/race/versions/versions",
        headers={"Authorization": f"Bearer {_token(committing_app)}"},
    )
    assert listing.get_json()["total"] == THREADS


@pytest.mark.parametrize(("claimed_as", "expected"), [("model", 202), ("dataset", 409)])
def test_a_first_registration_that_waited_on_another_claim_of_its_name(
    committing_app: Flask, claimed_as: str, expected: int
) -> None:
    # Another transaction claims the name first and commits while this registration waits on
    # its row: the registration then sees the claim (it does not read the name as unclaimed).
    name = f"race/waited-{claimed_as}"
    with committing_app.app_context():
        url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    token = _token(committing_app)
    with psycopg.connect(url) as other:
        other.execute(
            "INSERT INTO asset_names (name, asset_type, created_at) VALUES (%s, %s, now())",
            (name, claimed_as),
        )
        results: list[tuple[int, dict[str, Any]]] = []

        def post() -> None:
            response = committing_app.test_client().post(
                "/v1/assets",
                json={"asset_type": "model", "name": name, "version": "1.0.0"},
                headers={"Authorization": f"Bearer {token}"},
            )
            results.append((response.status_code, response.get_json()))

        thread = threading.Thread(target=post)
        thread.start()
        deadline = time.monotonic() + 10
        with psycopg.connect(url, autocommit=True) as watcher:
            while time.monotonic() < deadline:  # until the registration waits on the claim
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.01)
            assert waiting and waiting[0], "the registration never waited on the claim"
        other.commit()
        thread.join(timeout=30)
    [(status, doc)] = results
    assert status == expected, doc
    if expected == 409:
        assert doc["code"] == "ALREADY_EXISTS"
        assert "dataset" in doc["detail"]
    else:
        assert doc["asset_type"] == "model" and doc["status"] == "pending"
