"""Write events to the outbox, publish them with the relay to NATS JetStream; print events/s.

    .venv/bin/python bench/bench_relay.py [--events 5000] [--batch-size 200] [--sqlite]
                                          [--timeout 120] [--smoke]

Starts a private ``nats-server -js`` on a free loopback port (store in a temporary directory) and
creates a fresh PostgreSQL database on 127.0.0.1:5432 (user postgres; ``--sqlite``: a temporary
SQLite file instead), migrated. Writes N ``asset_updated`` events with ``record_event``, one to
three per transaction (the write rate includes the commit-time sequence lock), then runs
``OutboxRelay`` with a ``NatsPublisher`` in-process until every event is published (or
``--timeout``), and counts the messages of stream ``REGISTRY_EVENTS``. The server, the database
and the temporary directory are removed at the end. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import stop_cleanly_on_sigterm

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A private ``nats-server -js`` on a loopback port of its own."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(self.binary).is_file():
            raise SystemExit("nats-server is not installed (Debian package nats-server)")
        self.port = free_port()
        self.store = workdir / "jetstream"
        self.log = workdir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store),
                "-l",
                str(self.log),
            ]
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(64).startswith(b"INFO "):
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("nats-server did not start in 15 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


def create_pg_database() -> str:
    name = f"bench_relay_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL does not answer at {PG_ADMIN_URL} ({exc})") from None
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrated_app(database_url: str, var_dir: Path) -> Any:
    from flask_migrate import upgrade

    from app import create_app
    from config import load_settings

    settings = load_settings(
        environ={
            "REGISTRY_ENV": "development",
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "WARNING",
            "JWT_SECRET": secrets.token_urlsafe(48),  # no throwaway-secret warning
        },
        overrides={"var_dir": str(var_dir)},
    )
    app = create_app(settings)
    with app.app_context():
        upgrade()
    return app


def write_events(app: Any, total: int, seed: int = 1) -> float:
    """``total`` events, one to three per committed transaction; returns the seconds taken."""
    from app.events.service import record_event
    from app.extensions import db

    rng = random.Random(seed)
    asset_ids = [uuid.uuid4().hex[:26].upper() for _ in range(10)]
    with app.app_context():
        started = time.perf_counter()
        written = 0
        while written < total:
            for _ in range(min(rng.randint(1, 3), total - written)):
                record_event(db.session, "asset_updated", rng.choice(asset_ids), {"n": written})
                written += 1
            db.session.commit()
        elapsed = time.perf_counter() - started
        db.session.remove()
    return elapsed


class TimedPublisher:
    """Wraps the relay's publisher to count the time spent in ``publish`` (serialising the
    CloudEvent plus the JetStream round trip up to the acknowledgement)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    async def publish(self, row: Any) -> None:
        started = time.perf_counter()
        try:
            await self.inner.publish(row)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    async def close(self) -> None:
        await self.inner.close()


async def relay_events(
    engine: Any, url: str, total: int, batch_size: int, timeout: float
) -> tuple[int, float, float, int]:
    """Run the relay until ``total`` events are published or ``timeout`` passes; returns
    (published, seconds, seconds inside publish, publish calls)."""
    from app.events.relay import NatsPublisher, OutboxRelay

    publisher = TimedPublisher(NatsPublisher(url))
    relay = OutboxRelay(engine, publisher, batch_size=batch_size)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(relay.run(stop))
    deadline = time.monotonic() + timeout
    while relay.published < total and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    return relay.published, elapsed, publisher.seconds, publisher.calls


async def stream_count(url: str) -> int:
    import nats
    from nats.js.errors import NotFoundError

    from app.events.service import STREAM

    nc = await nats.connect(servers=[url], connect_timeout=3)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        return int(info.state.messages)
    except NotFoundError:  # the relay never got to create it
        return 0
    finally:
        await nc.close()


def pending_count(engine: Any) -> int:
    from sqlalchemy.orm import Session

    from app.events.service import outbox_backlog

    with Session(engine) as session:
        return outbox_backlog(session)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="how many events to write")
    parser.add_argument("--batch-size", type=int, default=200, help="OutboxRelay's batch_size")
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file")
    parser.add_argument("--timeout", type=float, default=120, help="give up publishing after")
    parser.add_argument("--smoke", action="store_true", help="200 events, quick")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    total = 200 if args.smoke else args.events
    if total < 1 or args.batch_size < 1:
        parser.error("--events and --batch-size must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    server = NatsServer(work / "nats")
    pg_name: str | None = None
    engine = None
    try:
        server.start()
        if args.sqlite:
            backend, database_url = "sqlite", f"sqlite:///{work / 'registry.db'}"
        else:
            pg_name = create_pg_database()
            backend, database_url = "postgresql", PG_URL.format(name=pg_name)
        app = migrated_app(database_url, work / "var")
        from app.extensions import db

        with app.app_context():
            engine = db.engine

        print(f"{backend}: writing {total} events ...", flush=True)
        write_s = write_events(app, total)
        print(f"{backend}: publishing to {server.url} ...", flush=True)
        published, publish_s, inside_s, calls = asyncio.run(
            relay_events(engine, server.url, total, args.batch_size, args.timeout)
        )
        in_stream = asyncio.run(stream_count(server.url))
        left = pending_count(engine)

        print()
        header = (
            f"{'backend':<12}{'events':>8}{'write ev/s':>12}{'publish ev/s':>14}"
            f"{'stream count':>14}{'batch size':>12}"
        )
        print(header)
        print(
            f"{backend:<12}{total:>8}{total / write_s:>12.0f}{published / publish_s:>14.0f}"
            f"{in_stream:>14}{args.batch_size:>12}"
        )
        print()
        print(f"write phase:   {write_s:.2f} s")
        print(
            f"publish phase: {publish_s:.2f} s for {published} events; "
            f"{inside_s:.2f} s inside publish ({calls} calls, "
            f"{1e6 * inside_s / max(calls, 1):.0f} us each), "
            f"{publish_s - inside_s:.2f} s elsewhere (database reads/marks, idle waits)"
        )
        verdict = "OK" if published == total == in_stream and left == 0 else "MISMATCH"
        print(f"check: stream {in_stream}, outbox pending {left}, expected {total}: {verdict}")
        if published < total:
            print(f"gave up after {args.timeout:g} s with {total - published} events unpublished")
        return 0 if verdict == "OK" else 1
    finally:
        if engine is not None:
            engine.dispose()
        server.stop()
        if pg_name is not None:
            try:
                drop_pg_database(pg_name)
            except psycopg.Error as exc:
                print(f"could not drop database {pg_name}: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
