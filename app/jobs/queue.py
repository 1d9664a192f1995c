"""The one place the app hands work to Celery: by task name, after the transaction commits.

``app/`` never imports ``workers/``. A send that fails (broker down) is logged and leaves the job
``queued``, marked unsent; the periodic ``registry.jobs.requeue_stale`` task sends it again at its
next pass once the broker is back, so no job is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from flask import current_app, has_app_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import event, update
from sqlalchemy.orm import Session, SessionTransaction

from config import Settings
from config.celery import celery_config

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

RUN_REGISTRATION = "registry.jobs.run_registration"
RUN_COMPLIANCE_SCAN = "registry.compliance.run_scan"
REQUEUE_STALE = "registry.jobs.requeue_stale"
QUEUE_DEFAULT = "registry"
QUEUE_TESTS = "registry-tests"  # test-suite execution scales apart from checksums
_PENDING = "registry_pending_tasks"


def make_producer(settings: Settings) -> Celery:
    """A Celery app used only to send tasks (the worker side is ``celery_app.celery``)."""
    producer = Celery("llm_registry_producer")
    producer.config_from_object(celery_config(settings))
    return producer


def send_task(producer: Celery, name: str, args: list[Any], queue: str = QUEUE_DEFAULT) -> bool:
    """Send now; True when the broker took it, False (logged) when it did not."""
    with _tracer.start_as_current_span(
        f"send {name}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "celery", "messaging.destination.name": queue},
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the task continues the caller's trace, under this span
        try:
            producer.send_task(
                name,
                args=args,
                queue=queue,
                headers=carrier,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # the broker is down: the reaper sends it later
            span.set_status(StatusCode.ERROR, exc.__class__.__name__)
            log.warning("could not enqueue %s%s: %s", name, args, exc.__class__.__name__)
            return False
    return True


def enqueue_after_commit(
    session: Session, name: str, args: list[Any], queue: str = QUEUE_DEFAULT
) -> None:
    """Send ``name(*args)`` once ``session`` commits; dropped if it rolls back."""
    producer = current_app.extensions["task_producer"] if has_app_context() else None
    session.info.setdefault(_PENDING, []).append((producer, name, args, queue))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    unsent = [
        args[0]  # every task sent here runs one job: its id first
        for producer, name, args, queue in session.info.pop(_PENDING, [])
        if producer is not None and not send_task(producer, name, args, queue)
    ]
    if unsent:
        _mark_unsent(session, unsent)


def _mark_unsent(session: Session, job_ids: list[str]) -> None:
    """Jobs whose message the broker refused (it was down): ``enqueued_at`` cleared, so that
    the reaper sends them at its next pass (every 30 s), as it does a job never sent. Without
    this they would wait ``REQUEUE_QUEUED_AFTER``, which is for a message the broker took and
    then lost. The transaction has ended (after commit): one statement of its own."""
    from app.jobs.models import Job

    try:
        with session.get_bind().engine.begin() as connection:
            connection.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.status == "queued")
                .values(enqueued_at=None)
            )
    except Exception as exc:  # the database too: the reaper still sends them, later
        log.warning("could not mark jobs %s unsent: %s", job_ids, exc.__class__.__name__)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction: SessionTransaction) -> None:
    # Only the whole transaction's rollback: a savepoint's keeps what was enqueued before it (a
    # task sent for a row its savepoint dropped finds no job and returns).
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)


QUEUES = (QUEUE_DEFAULT, QUEUE_TESTS, "registry-control")
_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: one list per queue and priority step


def queue_lengths(settings: Settings) -> dict[str, int]:
    """Tasks waiting in each queue of the broker (Redis lists, or the embedded SQLite broker's
    visible messages): what queue-length autoscaling and the dashboard read."""
    from config.celery import broker_url

    url = broker_url(settings)
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            with client.pipeline(transaction=False) as pipe:
                for queue in QUEUES:
                    pipe.llen(queue)
                    for step in (3, 6, 9):
                        pipe.llen(f"{queue}{_PRIORITY_SEP}{step}")
                counts = pipe.execute()
        finally:
            client.close()
        return {queue: sum(counts[i * 4 : i * 4 + 4]) for i, queue in enumerate(QUEUES)}
    if url.startswith("sqla+sqlite:///"):
        import contextlib
        import sqlite3

        path = url.removeprefix("sqla+sqlite:///")
        lengths = dict.fromkeys(QUEUES, 0)
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as c:
            try:
                rows = c.execute(
                    "SELECT q.name, count(m.id) FROM kombu_queue q JOIN kombu_message m "
                    "ON m.queue_id = q.id WHERE m.visible GROUP BY q.name"
                ).fetchall()
            except sqlite3.OperationalError:  # no task sent yet: the tables do not exist
                return lengths
        lengths.update({name: int(n) for name, n in rows if name in lengths})
        return lengths
    return {}
