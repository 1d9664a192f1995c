"""The Celery application, bound to the Flask app: ``celery -A celery_app:celery worker``.

Broker: ``CELERY_BROKER_URL`` (defaults to ``REDIS_URL``); with neither set, a SQLite database
under ./var through kombu's SQLAlchemy transport, so one machine needs no Redis. Job state lives
in the registry's database, never in a result backend.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task, signals
from opentelemetry import propagate
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind

from app import create_app
from app.context import actor_var, request_id_var
from app.observability import configure_logging, tracer
from config import load_settings
from config.celery import celery_config

configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())  # settings may warn: as JSON
settings = load_settings()
flask_app = create_app(settings)


class FlaskTask(Task):
    """Runs every task inside the Flask app context (database session, settings)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A span per run, continuing the trace of whoever sent the task (its ``traceparent``
        # travels as a message header): one registration is one trace, request to events.
        parent = propagate.extract(self.request, getter=_RequestGetter())
        # adopt_context() gives the run its job's request id and actor; they must not outlive
        # it (the process's next task, Celery's own log lines, the reaper's events).
        request_token, actor_token = request_id_var.set(None), actor_var.set(None)
        try:
            with (
                flask_app.app_context(),
                tracer.start_as_current_span(
                    f"run {self.name}", context=parent, kind=SpanKind.CONSUMER
                ),
            ):
                return super().__call__(*args, **kwargs)
        finally:
            actor_var.reset(actor_token)
            request_id_var.reset(request_token)


class _RequestGetter(Getter[Any]):
    """Reads trace headers from a Celery task request (custom headers become attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return ["traceparent", "tracestate"]


@signals.setup_logging.connect
def _json_logging(**_: Any) -> None:
    # Connecting here stops Celery from installing its own (plain text) handlers.
    configure_logging(settings.log_level)


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # Pooled database connections must not cross the fork into worker processes.
    from app.extensions import db

    with flask_app.app_context():
        db.engine.dispose(close=False)


celery = Celery("llm_registry", task_cls=FlaskTask)
celery.config_from_object(celery_config(settings))


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    # In the main process, before the pool forks: one endpoint sums every pool process's files.
    port = int(os.environ.get("REGISTRY_WORKER_METRICS_PORT") or 0)
    if not port or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        start_http_server(
            port, addr=os.environ.get("REGISTRY_WORKER_METRICS_HOST", "0.0.0.0"), registry=registry
        )
    except OSError as exc:  # a second worker on one host: metrics off, jobs still run
        logging.getLogger(__name__).warning("worker metrics not served on %s: %s", port, exc)


@signals.worker_process_shutdown.connect
def _forget_process_metrics(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]
