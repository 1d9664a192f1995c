"""The outbox relay against real NATS JetStream (CONTRACT.md §7): a registration's events reach
stream ``REGISTRY_EVENTS`` in feed order as CloudEvents with ``Nats-Msg-Id``, each once; a NATS
outage while the API keeps taking registrations loses nothing; two relays at once (the leader
killed half-way) publish every event once, in order.

The relay runs as operators run it (``llm-registry relay``) beside a committing app on its own
PostgreSQL database, a Redis broker and a Celery worker process.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.events.models import EVENT_TYPES
from app.events.service import record_event
from app.extensions import db
from tests.integration.nats_support import (
    SHARED_NATS_URL,
    NatsServer,
    read_stream,
    require_nats,
)
from tests.integration.pipeline_support import Process, Stack, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_SECONDS = 8.0
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def model(prefix: str, **fields: Any) -> dict[str, Any]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return {"asset_type": "model", "name": name, "version": "1.0.0", **fields}


def metric(stack: Stack, name: str) -> float:
    text = stack.app.test_client().get("/metrics").get_data(as_text=True)
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The machine's NATS on 127.0.0.1:4222, one worker and one relay."""
    require_nats(SHARED_NATS_URL)
    with running_stack(
        tmp_path_factory.mktemp("events"), "_events", NATS_URL=SHARED_NATS_URL
    ) as stack:
        stack.start_worker()
        stack.start_relay()
        yield stack


def test_a_registrations_events_arrive_in_order_as_cloudevents(stack: Stack) -> None:
    data = b"weights " + uuid.uuid4().bytes
    upload = stack.api("user").post(
        "/v1/blobs", data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert upload.status_code == 201, upload.get_json()
    request_id = f"req-{uuid.uuid4()}"
    response = stack.api("developer").post(
        "/v1/assets",
        json=model(
            "relayed", checksum={"algorithm": "SHA256", "value": hashlib.sha256(data).hexdigest()}
        ),
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 202, response.get_json()
    asset_id = response.get_json()["id"]
    job = stack.wait_job(response.get_json()["job"]["id"])
    assert job["status"] == "succeeded"
    stack.wait_outbox_drained()

    rows = stack.events(asset_id)
    messages = read_stream(SHARED_NATS_URL, f"registry.events.*.{asset_id}", len(rows))

    assert [r.type for r in rows][:1] == ["asset_registered"]
    assert {"checksum_verified", "asset_validated"} <= {r.type for r in rows}
    # In feed order, each exactly once, keyed for JetStream's de-duplication.
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [r.id for r in rows]
    feed = stack.api("viewer").get(f"/v1/events?asset_id={asset_id}&limit=500").get_json()
    assert [m.event for m in messages] == feed["items"]  # the same CloudEvents as the API's
    for message, row in zip(messages, rows, strict=True):
        event = message.event
        assert message.subject == f"registry.events.{row.type}.{asset_id}"
        assert message.headers["Content-Type"].startswith("application/cloudevents+json")
        assert event["specversion"] == "1.0"
        assert event["id"] == row.id and ULID.match(event["id"])
        assert event["type"] == row.type and event["type"] in EVENT_TYPES
        assert event["source"] == "/llm-registry"
        assert event["subject"] == asset_id
        assert event["datacontenttype"] == "application/json"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", event["time"])
        assert isinstance(event["data"], dict)
    first = messages[0].event
    assert first["requestid"] == request_id
    assert first["actor"] == "pipe-developer"
    sequences = [m.event["sequence"] for m in messages]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert metric(stack, "outbox_pending") == 0
    assert metric(stack, "events_published_total") >= len(rows)


def test_health_shows_nats_and_an_empty_backlog(stack: Stack) -> None:
    stack.wait_outbox_drained()

    body = stack.app.test_client().get("/health").get_json()

    assert body["checks"]["nats"]["status"] == "ok"
    assert "REGISTRY_EVENTS" in body["checks"]["nats"]["message"]
    assert body["checks"]["outbox"]["status"] == "ok"
    assert body["checks"]["outbox"]["pending"] == 0


def test_a_nats_outage_during_200_registrations_loses_nothing(tmp_path: Path) -> None:
    """NATS stops after 50 of 200 registrations and comes back after 150: every request was
    answered, and afterwards the stream holds every event of the outbox once, in order."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    (tmp_path / "stack").mkdir()
    try:
        with running_stack(tmp_path / "stack", "_events_outage", NATS_URL=server.url) as stack:
            stack.start_worker()
            stack.start_relay()
            api = stack.api("developer")
            statuses: list[int] = []
            health_during_outage: dict[str, Any] = {}
            slowest = 0.0
            stopped_at = 0.0
            for i in range(200):
                if i == 50:
                    stack.wait_outbox_drained()  # the relay is connected and publishing
                    server.stop()
                    stopped_at = time.monotonic()
                if i == 100:
                    health_during_outage = stack.app.test_client().get("/health").get_json()
                if i == 150:
                    # Down longer than the relay's acknowledgement timeout, so that its
                    # publishes fail and it backs off, instead of NATS coming back in time.
                    time.sleep(max(0.0, stopped_at + OUTAGE_SECONDS - time.monotonic()))
                    server.start()
                started = time.monotonic()
                statuses.append(api.post("/v1/assets", json=model("outage")).status_code)
                slowest = max(slowest, time.monotonic() - started)

            assert statuses == [202] * 200
            assert slowest < 5, f"a registration took {slowest:.1f} s while NATS was down"
            assert health_during_outage["status"] == "degraded"
            assert health_during_outage["checks"]["nats"]["status"] == "error"
            assert health_during_outage["checks"]["outbox"]["pending"] > 0
            wait_jobs_finished(stack, 200)
            stack.wait_outbox_drained(timeout=90)

            rows = stack.events()
            messages = read_stream(server.url, "registry.events.>", len(rows))
            relay_log = stack.processes[-1].log_tail(100_000)
    finally:
        server.stop()

    assert "retrying in" in relay_log  # the relay did meet the outage, and backed off
    assert len(rows) >= 200 * 3  # registered + at least a verdict and a step event each
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert ids == [r.id for r in rows]


def wait_jobs_finished(stack: Stack, count: int, timeout: float = 120) -> None:
    """Until ``count`` jobs have finished (their verdict events are then in the outbox)."""
    from sqlalchemy import func, select

    from app.jobs.models import Job

    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = stack.query(
            lambda s: (
                s.scalar(select(func.count()).where(Job.status.in_(("succeeded", "failed")))) or 0
            )
        )
        if done >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"only {done} of {count} jobs finished in {timeout} s\n{stack.logs()}")


def write_events(stack: Stack, total: int, threads: int = 4) -> None:
    """``total`` events from ``threads`` concurrent writers, one to three per transaction."""
    asset_ids = [str(uuid.uuid4().hex[:26]).upper() for _ in range(10)]

    def writer(count: int, seed: int) -> None:
        rng = random.Random(seed)
        with stack.app.app_context():
            written = 0
            while written < count:
                for _ in range(min(rng.randint(1, 3), count - written)):
                    record_event(db.session, "asset_updated", rng.choice(asset_ids), {"n": written})
                    written += 1
                db.session.commit()
            db.session.remove()

    share = total // threads
    workers = [
        threading.Thread(target=writer, args=(share + (total % threads if i == 0 else 0), i))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert not worker.is_alive()


def leader(relays: list[Process], timeout: float = 20) -> Process:
    """The relay whose log says it leads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [r for r in relays if r.alive() and "this relay is the leader" in r.log_tail()]
        if leaders:
            assert len(leaders) == 1, [r.name for r in leaders]
            return leaders[0]
        time.sleep(0.1)
    pytest.fail("no relay took the lead:\n" + "\n".join(r.log_tail() for r in relays))


def test_two_relays_publish_1000_events_once_in_order(tmp_path: Path) -> None:
    """Two relays run at once; the leader is killed half-way and the other takes over."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    (tmp_path / "stack").mkdir()
    try:
        with running_stack(tmp_path / "stack", "_events_relays", NATS_URL=server.url) as stack:
            relays = [stack.start_relay("relay-a"), stack.start_relay("relay-b")]
            write_events(stack, 500)
            first = leader(relays)
            first.kill()  # SIGKILL: its lock goes with its database connection
            write_events(stack, 500)
            second = leader([r for r in relays if r is not first])
            stack.wait_outbox_drained(timeout=90)
            assert second.alive()

            rows = stack.events()
            messages = read_stream(server.url, "registry.events.>", len(rows))
            published = metric(stack, "events_published_total")
    finally:
        server.stop()

    assert len(rows) == 1000
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert ids == [r.id for r in rows]
    assert published == 1000
