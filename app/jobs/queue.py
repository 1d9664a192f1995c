"""The one place the app hands work to Celery: by task name, after the transaction commits.

``app/`` never imports ``workers/``. A send that fails (broker down) is logged and leaves the job
``queued``; the periodic ``registry.jobs.requeue_stale`` task sends it again once the broker is
back, so no job is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from config import Settings
from config.celery import celery_config

log = logging.getLogger(__name__)

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
    try:
        producer.send_task(
            name,
            args=args,
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:  # the broker is down: the reaper sends it later
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
    for producer, name, args, queue in session.info.pop(_PENDING, []):
        if producer is not None:
            send_task(producer, name, args, queue)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction: SessionTransaction) -> None:
    # Only the whole transaction's rollback: a savepoint's keeps what was enqueued before it (a
    # task sent for a row its savepoint dropped finds no job and returns).
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)
