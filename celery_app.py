"""The Celery application, bound to the Flask app: ``celery -A celery_app:celery worker``.

Broker: ``CELERY_BROKER_URL`` (defaults to ``REDIS_URL``); with neither set, a SQLite database
under ./var through kombu's SQLAlchemy transport, so one machine needs no Redis. Job state lives
in the registry's database, never in a result backend.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task, signals
from opentelemetry.trace import SpanKind

from app import create_app
from app.observability import configure_logging, tracer
from config import load_settings
from config.celery import celery_config

configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())  # settings may warn: as JSON
settings = load_settings()
flask_app = create_app(settings)


class FlaskTask(Task):
    """Runs every task inside the Flask app context (database session, settings)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A span per run: log lines and the events the task writes carry its trace id.
        with (
            flask_app.app_context(),
            tracer.start_as_current_span(self.name, kind=SpanKind.CONSUMER),
        ):
            return super().__call__(*args, **kwargs)


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
