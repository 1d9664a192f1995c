"""Celery settings derived from the registry settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kombu.entity import Queue

from config.settings import Settings


def broker_url(settings: Settings) -> str:
    """The broker: Redis in service mode, else SQLite under ./var (kombu SQLAlchemy transport)."""
    if settings.celery_broker_url:
        return settings.celery_broker_url
    return f"sqla+sqlite:///{Path(settings.var_dir) / 'broker.db'}"


QUEUE_NAMES = ("registry", "registry-tests", "registry-control")


def prepare_broker(settings: Settings, attempts: int = 10) -> None:
    """Create the embedded SQLite broker's tables and queues before several processes use it.

    kombu's SQLAlchemy transport creates them on first use, guarded only by a lock inside one
    process: on a fresh ``broker.db`` the worker declaring its queues and the API sending its
    first task both run ``CREATE TABLE`` and ``INSERT INTO kombu_queue``, and the loser gets
    ``IntegrityError: UNIQUE constraint failed: kombu_queue.name``. In the worker that is an
    "Unrecoverable error" (it exits, and ``llm-registry run`` stops everything with it); in the
    API the task is not sent. Done here, with retries, the others find both in place.
    """
    url = broker_url(settings)
    if not url.startswith("sqla+"):
        return
    from kombu.connection import Connection
    from kombu.transport.sqlalchemy import Channel
    from sqlalchemy.exc import IntegrityError, OperationalError

    Path(settings.var_dir).mkdir(parents=True, exist_ok=True)
    try:
        for attempt in range(attempts):
            try:
                with Connection(url) as connection:  # type: ignore[no-untyped-call]
                    channel = connection.default_channel
                    for name in QUEUE_NAMES:
                        Queue(name).bind(channel).declare()  # type: ignore[no-untyped-call]
                return
            except (IntegrityError, OperationalError):  # another process created it just now
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
    finally:
        # kombu caches the engine per process: no pooled SQLite connection may cross the fork
        # into gunicorn's workers.
        for engine, _ in Channel._engines.values():
            engine.dispose()
        Channel._engines.clear()


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    # Redis redelivers an unacked task after the visibility timeout; kombu's SQLAlchemy transport
    # hands its options to create_engine, so it gets none.
    transport_options = {"visibility_timeout": 3600} if url.startswith("redis") else {}
    # kombu's Redis transport with one client per channel (app/jobs/redis_transport.py); kombu
    # treats rediss:// by its transport's name (TLS checks), so that one keeps kombu's own.
    transport = (
        {"broker_transport": "app.jobs.redis_transport:Transport"}
        if url.startswith("redis://")
        else {}
    )
    return {
        "broker_url": url,
        **transport,
        "result_backend": None,  # job state lives in the registry database
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        # Time limits stay below the broker's visibility timeout, so an unacked task is only
        # redelivered once its worker is really gone.
        "task_soft_time_limit": 3000,
        "task_time_limit": 3300,
        "broker_transport_options": transport_options,
        # Task events (received, started, succeeded, failed) are off until asked for, as in
        # Celery's own default: Flower (docker/docker-compose.yml) asks every worker to send them
        # (an enable_events broadcast every few seconds while it runs), `celery control
        # enable_events` does it by hand and `llm-registry worker --task-events` from the start.
        # Always on, they cost a worker's main process a third of its CPU per task (three
        # publishes, each through a new Redis client of kombu's). The API never sends
        # "task-sent" (a second publish per registration; GET /v1/jobs/{id} shows a queued job).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_default_queue": "registry",
        # Every worker consumes all three unless told otherwise (llm-registry worker --queues),
        # also when started as `celery -A celery_app:celery worker`.
        "task_queues": [
            Queue(name)  # type: ignore[no-untyped-call]
            for name in QUEUE_NAMES
        ],
        # Housekeeping gets a queue of its own so a dedicated worker can serve it while the
        # main fleet is busy hashing large blobs (every worker also consumes it by default).
        "task_routes": {
            "registry.jobs.requeue_stale": {"queue": "registry-control"},
            "registry.compliance.schedule_scan": {"queue": "registry-control"},
            "registry.stats.fold_counts": {"queue": "registry-control"},
        },
        "include": ["workers.registration", "workers.compliance", "workers.stats"],
        "beat_schedule": {
            "requeue-stale-jobs": {"task": "registry.jobs.requeue_stale", "schedule": 30.0},
            "fold-counts": {"task": "registry.stats.fold_counts", "schedule": 10.0},
            "compliance-scan": {
                "task": "registry.compliance.schedule_scan",
                "schedule": float(settings.compliance_scan_interval_seconds),
            },
        },
        "beat_schedule_filename": str(Path(settings.var_dir) / "celerybeat-schedule"),
        "timezone": "UTC",
        "enable_utc": True,
    }
