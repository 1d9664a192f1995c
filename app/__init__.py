"""The Flask application factory: binds extensions, blueprints and error handlers; nothing else."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from config import Settings, load_settings

log = logging.getLogger(__name__)

API_TITLE = "LLM Registry"
API_VERSION = "v1"
MAX_JSON_BYTES = 16 * 1024 * 1024


def _flask_config(settings: Settings) -> dict[str, Any]:
    # No pool_pre_ping: app.db.install_idle_ping pings only connections that sat idle.
    engine_options: dict[str, Any] = {}
    if str(settings.database_url).startswith("postgresql"):
        # Fail fast (then 503) rather than hang when the database is unreachable. No parallel
        # workers: the statements here are index-driven, and starting workers cost more than
        # the scans they would share (a page of a 1% tag of 1M assets: 24 ms with two workers,
        # 9 ms without), while taking cores from the other requests.
        engine_options.update(
            pool_size=10,
            max_overflow=10,
            pool_timeout=5,
            connect_args={
                "connect_timeout": 3,
                "options": "-c statement_timeout=30000 -c max_parallel_workers_per_gather=0",
            },
        )
    return {
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        "MAX_CONTENT_LENGTH": MAX_JSON_BYTES,
        "JWT_SECRET_KEY": settings.jwt_secret,
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        "JWT_ENCODE_ISSUER": settings.jwt_issuer,
        "JWT_DECODE_ISSUER": settings.jwt_issuer,
        "JWT_ENCODE_AUDIENCE": settings.jwt_audience,
        "JWT_DECODE_AUDIENCE": settings.jwt_audience,
        "JWT_ENCODE_NBF": True,
        "JWT_ACCESS_TOKEN_EXPIRES": dt.timedelta(seconds=settings.jwt_expiration_seconds),
        "JWT_REFRESH_TOKEN_EXPIRES": dt.timedelta(days=7),
        "JWT_TOKEN_LOCATION": ["headers"],
        "API_TITLE": API_TITLE,
        "API_VERSION": API_VERSION,
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": "https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
    }


def create_app(
    settings: Settings | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Flask:
    """Build a registry app from ``settings`` (default: defaults < TOML < environment)."""
    from app import errors, models, observability  # noqa: F401  (models: complete metadata)
    from app.auth.revocation import make_revocation_store
    from app.cache import make_read_cache
    from app.extensions import db, jwt, make_api, migrate
    from app.http import RegistryFlask
    from app.jobs.queue import make_producer
    from app.json import OrjsonProvider
    from app.metrics import init_metrics
    from app.observability import init_cors
    from app.ratelimit import init_rate_limits
    from app.storage import blob_store_from_url

    if settings is None:
        observability.configure_logging("INFO")  # so that settings warnings are JSON too
        settings = load_settings(overrides=overrides)
    observability.configure_logging(settings.log_level)
    observability.init_tracing(settings.otel_exporter_otlp_endpoint)
    app = RegistryFlask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config.update(_flask_config(settings))
    app.extensions["registry_settings"] = settings
    app.extensions["blob_store"] = blob_store_from_url(
        str(settings.blob_store_url), settings.s3_endpoint_url
    )
    app.extensions["task_producer"] = make_producer(settings)
    app.extensions["revocation_store"] = make_revocation_store(settings.redis_url)
    app.extensions["read_cache"] = make_read_cache(settings.redis_url, str(settings.database_url))
    if str(settings.database_url).startswith("sqlite"):
        from pathlib import Path

        Path(str(settings.database_url).removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )

    db.init_app(app)
    migrate.init_app(app, db, directory=str(_migrations_dir()), render_as_batch=True)
    jwt.init_app(app)
    from app.converters import CONVERTERS

    for name, (converter, _doc) in CONVERTERS.items():
        app.url_map.converters[name] = converter
    api = make_api()
    app.extensions["api"] = api
    api.init_app(
        app,
        spec_kwargs={
            "info": {
                "description": "Registry for LLM models, pipelines, datasets, policies "
                "and test suites."
            },
            "components": {
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "JWT access token from /v1/auth/login, or an API key "
                        "(llmr_...) from /v1/auth/api-keys",
                    },
                    "apiKeyAuth": {
                        "type": "apiKey",
                        "in": "header",
                        "name": "X-API-Key",
                        "description": "An API key (llmr_...). A key created with signing: "
                        "true (or any key with REQUIRE_REQUEST_SIGNING) also needs "
                        "X-Signature-Timestamp and X-Signature (CONTRACT.md §2).",
                    },
                }
            },
        },
    )
    with app.app_context():
        from app.db import install_autocommit_reads, install_idle_ping, install_sqlite_pragmas

        install_sqlite_pragmas(db.engine)
        install_idle_ping(db.engine)
        install_autocommit_reads(db.engine)
        if settings.otel_exporter_otlp_endpoint:  # unexported SQL spans only cost time
            observability.trace_engine(db.engine)
    for _name, (converter, doc) in CONVERTERS.items():
        api.register_converter(converter, lambda _c, doc=doc: doc)
    _register_blueprints(api)
    errors.register_error_handlers(app)
    observability.install_request_hooks(app)
    init_rate_limits(app, settings)
    init_cors(app, settings)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    init_metrics(app)
    _register_commands(app)
    return app


def _migrations_dir() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "migrations"


def _register_blueprints(api: Any) -> None:
    from app.assets.routes import blp as assets
    from app.auth.routes import blp as auth
    from app.blobs.routes import blp as blobs
    from app.compliance.routes import blp as compliance
    from app.dependencies.routes import blp as dependencies
    from app.events.routes import blp as events
    from app.health.routes import blp as health
    from app.jobs.routes import blp as jobs
    from app.users.routes import blp as users

    for blueprint in (health, auth, users, blobs, dependencies, compliance, assets, jobs, events):
        api.register_blueprint(blueprint)


def _register_commands(app: Flask) -> None:
    from app.events.commands import events_cli
    from app.users.commands import users_cli

    app.cli.add_command(users_cli)
    app.cli.add_command(events_cli)


def ensure_first_admin(app: Flask) -> None:
    """Create the first admin from REGISTRY_ADMIN_USERNAME/PASSWORD when no user exists yet
    (CONTRACT.md §2), whichever way the app was started. A database that is not migrated yet
    is left alone: ``llm-registry migrate`` comes first, and the next start creates the admin."""
    from sqlalchemy.exc import DBAPIError

    from app.extensions import db
    from app.users.service import ensure_first_admin as create_if_none

    settings: Settings = app.extensions["registry_settings"]
    if not settings.registry_admin_username or not settings.registry_admin_password:
        return
    with app.app_context():
        try:
            create_if_none(settings.registry_admin_username, settings.registry_admin_password)
        except DBAPIError as exc:
            db.session.rollback()
            log.warning("first admin not created yet: %s", exc.__class__.__name__)
        finally:
            db.session.remove()
            db.engine.dispose()  # no pooled connection crosses a fork (gunicorn --preload)
