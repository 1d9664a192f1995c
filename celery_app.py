"""The Celery application, bound to the Flask app: ``celery -A celery_app:celery worker``.

Broker: ``CELERY_BROKER_URL`` (defaults to ``REDIS_URL``); with neither set, a SQLite database
under ./var through kombu's SQLAlchemy transport, so one machine needs no Redis. Job state lives
in the registry's database, never in a result backend.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from app import create_app
from config import load_settings
from config.celery import celery_config

settings = load_settings()
flask_app = create_app(settings)


class FlaskTask(Task):
    """Runs every task inside the Flask app context (database session, settings)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with flask_app.app_context():
            return super().__call__(*args, **kwargs)


celery = Celery("llm_registry", task_cls=FlaskTask)
celery.config_from_object(celery_config(settings))
flask_app.extensions["celery"] = celery
