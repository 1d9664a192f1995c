"""Extension singletons, bound to the app by create_app."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import g, has_app_context
from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession

from app.db import Base
from app.openapi import RegistryApi

# A request that cannot change state sets this in ``g`` (app/observability.py) for its duration.
READS_ONLY = "db_reads_only"


class RegistrySession(FlaskSession):
    """Flask-SQLAlchemy's session; during a GET or HEAD request, PostgreSQL is read in
    autocommit: no BEGIN before the first statement and no ROLLBACK at the end, two round trips
    of a read's three to five. Under READ COMMITTED each statement of a transaction takes its own
    snapshot anyway, so a read sees the same rows either way. Such requests do not change state;
    the one write one may make (an API key's ``last_used_at``) is a single statement."""

    def get_bind(
        self,
        mapper: Any | None = None,
        clause: Any | None = None,
        bind: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        engine = super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)
        if (
            bind is None
            and isinstance(engine, sa.Engine)
            and engine.dialect.name == "postgresql"
            and has_app_context()
            and g.get(READS_ONLY)
        ):
            # One per engine (it shares the engine's pool), kept on the engine: the session keys
            # its connections by bind, so every call must return the same object.
            reads = getattr(engine, "_registry_reads", None)
            if reads is None:
                reads = engine.execution_options(isolation_level="AUTOCOMMIT")
                engine._registry_reads = reads  # type: ignore[attr-defined]
            return reads
        return engine


# expire_on_commit=False: what a use case returns is the state it committed. Reloading after
# the commit would race with the worker that the commit just woke (a 202 showing "validating").
db = SQLAlchemy(
    metadata=Base.metadata, session_options={"expire_on_commit": False, "class_": RegistrySession}
)
migrate = Migrate()
jwt = JWTManager()


def make_api() -> RegistryApi:
    """flask-smorest's Api binds to a single app (its spec and blueprints), so unlike the
    extensions above it is made per app by create_app; reach it as ``app.extensions["api"]``."""
    return RegistryApi()
