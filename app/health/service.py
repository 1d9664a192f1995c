"""Health checks of each part the registry talks to (CONTRACT.md §8).

Every check is bounded by a short timeout so that a dead dependency makes ``/health`` slow by at
most a second or two, never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import text

from app.db import utcnow
from app.events.service import STREAM, outbox_backlog
from app.extensions import db
from app.storage import BlobStore, LocalBlobStore, S3BlobStore
from config import Settings
from config.celery import broker_url

TIMEOUT_SECONDS = 2.0
OUTBOX_STALE_SECONDS = 120.0


def _timed(check: Callable[[], str | None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        message = check()
    except Exception as exc:  # a health check reports failures; it never raises
        return {
            "status": "error",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "message": f"{exc.__class__.__name__}: {str(exc)[:200]}",
        }
    result: dict[str, Any] = {
        "status": "ok",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if message:
        result["message"] = message
    return result


def _database() -> str | None:
    db.session.execute(text("SELECT 1"))
    db.session.rollback()
    return None


def _redis(url: str) -> Callable[[], str | None]:
    def check() -> str | None:
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )
        try:
            client.ping()
        finally:
            client.close()
        return None

    return check


def _nats(url: str) -> Callable[[], str | None]:
    """Connect, and ask JetStream about the event stream (the relay creates it)."""

    async def probe() -> str:
        import nats
        from nats.js.errors import NotFoundError

        async def quiet(_exc: Exception) -> None:
            return None

        nc = await nats.connect(
            servers=[url],
            connect_timeout=TIMEOUT_SECONDS,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        try:
            js = nc.jetstream(timeout=TIMEOUT_SECONDS)
            try:
                info = await js.stream_info(STREAM)
            except NotFoundError:
                return f"JetStream up; stream {STREAM} not created yet (the relay creates it)"
            return f"stream {STREAM}: {info.state.messages} messages"
        finally:
            await nc.close()

    def check() -> str | None:
        return asyncio.run(asyncio.wait_for(probe(), timeout=TIMEOUT_SECONDS * 2))

    return check


def _outbox(nats_configured: bool) -> dict[str, Any]:
    """The outbox backlog; ``error`` when NATS is configured and an event has waited longer
    than ``OUTBOX_STALE_SECONDS`` (no relay running, or it cannot publish)."""
    started = time.perf_counter()
    try:
        pending, oldest = outbox_backlog(db.session)
        db.session.rollback()
    except Exception as exc:
        return {"status": "error", "message": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
    age = (utcnow() - oldest).total_seconds() if oldest else 0.0
    result: dict[str, Any] = {
        "status": "ok",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "pending": pending,
        "oldest_pending_age_seconds": round(max(age, 0.0), 3),
    }
    if not nats_configured:
        result["message"] = "NATS not configured: events stay in the outbox (GET /v1/events)"
    elif age > OUTBOX_STALE_SECONDS:
        result["status"] = "error"
        result["message"] = f"the oldest pending event has waited {age:.0f} s: is a relay running?"
    return result


def _blob_store(store: BlobStore) -> Callable[[], str | None]:
    def check() -> str | None:
        if isinstance(store, LocalBlobStore):
            store.root.mkdir(parents=True, exist_ok=True)
            if not os.access(store.root, os.W_OK):
                raise PermissionError(f"{store.root} is not writable")
        elif isinstance(store, S3BlobStore):
            _s3_probe(store.endpoint_url).head_bucket(Bucket=store.bucket)
        return None

    return check


@functools.cache
def _s3_probe(endpoint_url: str | None) -> Any:
    """A boto3 client for health checks only: one attempt, short timeouts (the store's own
    client retries patiently, which a probe must not)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=TIMEOUT_SECONDS,
        read_timeout=TIMEOUT_SECONDS,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _sqlite_broker(path: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=TIMEOUT_SECONDS)) as connection:
            connection.execute("SELECT 1")
        return "embedded broker (SQLite)"

    return check


def _broker_check(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    if url.startswith(("redis://", "rediss://")):
        return _timed(_redis(url))
    if url.startswith("sqla+sqlite:///"):
        return _timed(_sqlite_broker(Path(url.removeprefix("sqla+sqlite:///"))))
    return {"status": "disabled"}


def health(settings: Settings, store: BlobStore) -> dict[str, Any]:
    """The ``/health`` document; ``unhealthy`` only when the database is down."""
    checks: dict[str, dict[str, Any]] = {"database": _timed(_database)}
    checks["redis"] = (
        _timed(_redis(settings.redis_url)) if settings.redis_url else {"status": "disabled"}
    )
    checks["broker"] = _broker_check(settings)
    checks["blob_store"] = _timed(_blob_store(store))
    checks["nats"] = (
        _timed(_nats(settings.nats_url)) if settings.nats_url else {"status": "disabled"}
    )
    checks["outbox"] = _outbox(bool(settings.nats_url))
    if checks["database"]["status"] != "ok":
        status = "unhealthy"
    elif any(c["status"] == "error" for c in checks.values()):
        status = "degraded"
    else:
        status = "healthy"
    return {"status": status, "version": build_info()["version"], "checks": checks}


def readiness(settings: Settings) -> dict[str, dict[str, Any]]:
    return {"database": _timed(_database), "broker": _broker_check(settings)}


@functools.cache
def build_info() -> dict[str, Any]:
    """Version and build of this process, read once."""
    try:
        version = metadata.version("llm-registry")
    except metadata.PackageNotFoundError:
        version = "0.0.0+unknown"
    root = Path(__file__).resolve().parents[2]
    git_sha = None
    build_file = root / "BUILD_INFO"
    build_timestamp = None
    if build_file.is_file():  # written by the container build
        fields = dict(
            line.split("=", 1) for line in build_file.read_text().splitlines() if "=" in line
        )
        git_sha, build_timestamp = fields.get("git_sha"), fields.get("build_timestamp")
    elif (root / ".git").exists():
        try:
            git_sha = (
                subprocess.run(
                    ["git", "-C", str(root), "rev-parse", "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            git_sha = None
    return {
        "version": version,
        "api_version": "v1",
        "git_sha": git_sha,
        "build_timestamp": build_timestamp,
    }
