"""The outbox relay: publishes committed events, in feed order, to NATS JetStream.

It runs as its own process (``llm-registry relay``, ``flask --app wsgi events relay``) so that the
API never waits on NATS. Its loop: take leadership, read the oldest pending events, publish each
as a CloudEvent with ``Nats-Msg-Id`` = event id and wait for JetStream's acknowledgement before
the next, then mark the acknowledged ones published. A failure (NATS down, the stream gone, the
database away) leaves the rest pending and is retried with capped exponential backoff.

Order and duplicates with several relays: one leader publishes (a PostgreSQL session advisory
lock, or a file lock next to a SQLite database); the others wait to take over. Even when two
publish at once for a moment (a leader whose lock connection died mid-batch), each publishes
event *k+1* only after *k* was acknowledged, i.e. stored, so the stream still receives events in
feed order, and JetStream's duplicate window drops the second copy of an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from app.events.models import Event
from app.events.service import (
    STREAM,
    SUBJECT_PREFIX,
    cloudevent_bytes,
    mark_published,
    pending_events,
    subject_for,
    traceparent_of,
)

log = logging.getLogger("app.events.relay")
_tracer = trace.get_tracer("llm-registry.relay")
T = TypeVar("T")

# Session advisory lock key of the relay leader ("LLMRRLAY" as a 63-bit integer).
RELAY_LEADER_LOCK = 0x4C4C4D52524C4159
DUPLICATE_WINDOW_SECONDS = 120.0


class EventPublisher(Protocol):
    """Where the relay sends events. ``publish`` returns only once the event is durably stored
    there, and raises otherwise."""

    async def publish(self, row: Event) -> None: ...

    async def close(self) -> None: ...


class NatsPublisher:
    """JetStream publisher: stream ``REGISTRY_EVENTS`` on ``registry.events.>``, created when
    missing (also after a server that lost its storage comes back)."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        ack_timeout: float = 5.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._nc: Any = None
        self._js: Any = None
        self._stream_ready = False

    async def _connect(self) -> None:
        import nats

        if self._nc is not None and not self._nc.is_closed:
            return
        self._nc = await asyncio.wait_for(
            nats.connect(
                servers=[self.url],
                name="llm-registry-relay",
                connect_timeout=self.connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=self._on_error,
            ),
            timeout=self.connect_timeout * 3,
        )
        self._js = self._nc.jetstream(timeout=self.ack_timeout)
        self._stream_ready = False

    @staticmethod
    async def _on_error(exc: Exception) -> None:
        log.warning("NATS connection: %s", exc.__class__.__name__ + (f": {exc}" if exc else ""))

    async def _ensure_stream(self) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            await self._js.add_stream(
                StreamConfig(
                    name=self.stream,
                    description="LLM Registry events (CloudEvents 1.0 JSON)",
                    subjects=[f"{SUBJECT_PREFIX}.>"],
                    storage=StorageType.FILE,
                    duplicate_window=DUPLICATE_WINDOW_SECONDS,
                )
            )
            log.info("created JetStream stream %s", self.stream)
        self._stream_ready = True

    async def publish(self, row: Event) -> None:
        await self._connect()
        if not self._stream_ready:
            await self._ensure_stream()
        subject = subject_for(row)
        # The publish joins the trace of the change that wrote the event.
        parent = propagate.extract({"traceparent": traceparent_of(row) or ""})
        with _tracer.start_as_current_span(
            f"publish {subject}", context=parent, kind=SpanKind.PRODUCER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", subject)
            span.set_attribute("messaging.message.id", row.id)
            headers = {
                "Nats-Msg-Id": row.id,
                "Content-Type": "application/cloudevents+json; charset=utf-8",
            }
            propagate.inject(headers)
            try:
                await self._js.publish(
                    subject,
                    cloudevent_bytes(row),
                    timeout=self.ack_timeout,
                    stream=self.stream,
                    headers=headers,
                )
            except Exception:
                self._stream_ready = False  # check (and if need be re-create) it before a retry
                raise

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._nc = None


# ---- leadership ------------------------------------------------------------------------------


class Leadership(Protocol):
    def acquire(self) -> bool:
        """Take (or confirm) leadership without waiting; False while another relay holds it."""

    def release(self) -> None: ...


class AdvisoryLockLeadership:
    """PostgreSQL: a session advisory lock held on a connection of its own. It is released when
    that connection ends, so a relay that dies hands over at once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None

    def acquire(self) -> bool:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("relay leadership lost with its database connection")
                self.release()
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            held = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LEADER_LOCK}
            ).scalar_one()
        except Exception:
            connection.close()
            raise
        if held:
            self._connection = connection
            log.info("this relay is the leader")
            return True
        connection.close()
        return False

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()  # closing the session releases the lock
            self._connection = None


class FileLockLeadership:
    """SQLite (one machine): an exclusive ``flock`` on a file next to the database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        log.info("this relay is the leader")
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def leadership_for(engine: Engine) -> Leadership:
    if engine.dialect.name == "postgresql":
        return AdvisoryLockLeadership(engine)
    database = engine.url.database or "registry.db"
    return FileLockLeadership(Path(f"{database}.relay.lock"))


# ---- the loop --------------------------------------------------------------------------------


class Backoff:
    """Capped exponential delays with full jitter."""

    def __init__(self, first: float = 0.25, cap: float = 15.0) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        self.failures += 1
        return random.uniform(self.first, min(self.cap, self.first * 2**self.failures))  # noqa: S311

    def reset(self) -> None:
        self.failures = 0


class OutboxRelay:
    """Moves pending events from the outbox to an ``EventPublisher``, in order, until stopped.

    Safe to run several: see the module docstring. Every database call runs in a thread so
    that the NATS connection keeps its heartbeats while the database is slow.
    """

    def __init__(
        self,
        engine: Engine,
        publisher: EventPublisher,
        *,
        leadership: Leadership | None = None,
        batch_size: int = 200,
        idle_seconds: float = 0.2,
        standby_seconds: float = 1.0,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.leadership = leadership or leadership_for(engine)
        self.batch_size = batch_size
        self.idle_seconds = idle_seconds
        self.standby_seconds = standby_seconds
        self.published = 0

    async def _db(self, work: Callable[[Session], T]) -> T:
        def run() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                return work(session)

        return await asyncio.to_thread(run)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        failing = False
        try:
            while not stop.is_set():
                try:
                    if not await asyncio.to_thread(self.leadership.acquire):
                        await _sleep(stop, self.standby_seconds)
                        continue
                    sent = await self.publish_batch(stop)
                except Exception as exc:
                    delay = backoff.next()
                    log.warning(
                        "relay: %s; retrying in %.1f s",
                        f"{exc.__class__.__name__}: {exc}"[:300],
                        delay,
                    )
                    failing = True
                    await _sleep(stop, delay)
                    continue
                if failing:
                    log.info("relay: publishing again")
                    failing = False
                backoff.reset()
                if sent < self.batch_size:
                    await _sleep(stop, self.idle_seconds)
        finally:
            await asyncio.to_thread(self.leadership.release)
            await self.publisher.close()

    async def publish_batch(self, stop: asyncio.Event | None = None) -> int:
        """Publish up to ``batch_size`` pending events in order; mark what was acknowledged even
        when a later one fails (and then re-raise). Returns how many were published."""
        rows = await self._db(lambda s: pending_events(s, self.batch_size))
        acked: list[Event] = []
        try:
            for row in rows:
                if stop is not None and stop.is_set():
                    break
                await self.publisher.publish(row)
                acked.append(row)
        finally:
            if acked:
                marked = await self._db(lambda s: mark_published(s, acked))
                self.published += marked
                log.debug("relay: published %d events up to seq %s", marked, acked[-1].seq)
        return len(acked)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def run_relay(settings: Any) -> None:
    """The relay process: until SIGTERM or SIGINT. Needs ``NATS_URL``."""
    import signal

    from app import create_app
    from app.extensions import db

    if not settings.nats_url:
        raise SystemExit("NATS_URL is not set: events stay in the outbox (GET /v1/events)")
    app = create_app(settings)
    with app.app_context():
        engine = db.engine

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        relay = OutboxRelay(engine, NatsPublisher(settings.nats_url))
        log.info("relay started: outbox -> %s stream %s", _redact(settings.nats_url), STREAM)
        await relay.run(stop)
        log.info("relay stopped after publishing %d events", relay.published)

    asyncio.run(main())
    engine.dispose()


def _redact(url: str) -> str:
    """A URL without its credentials, for logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url
