"""A real registration pipeline for integration tests: a committing app on its own PostgreSQL
database, the Redis broker on a dedicated database number, and Celery worker (and beat)
processes started the way an operator starts them.

Used by ``test_pipeline.py`` and ``test_pipeline_crash.py``. Every service must answer: one that
does not fails the test, it never turns into a skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import create_app
from app.events.models import Event
from app.extensions import db
from app.users.service import create_user
from config import ENV_NAMES
from tests.conftest import (
    JWT_SECRET,
    PASSWORD,
    Api,
    drop_pg_database,
    fresh_pg_database,
    login,
    make_settings,
)

REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
FIRST_REDIS_DB, LAST_REDIS_DB = 7, 15
CLAIM_KEY = "llm-registry-tests:owner"
CLAIM_SECONDS = 3600
NODE_HOST = "pipeline-test"  # the host part of the Celery node names the tests give workers
BIN = Path(sys.executable).parent
FINISHED = ("succeeded", "failed")
T = TypeVar("T")


def redis_url(db_number: int) -> str:
    return f"{REDIS_BASE_URL}/{db_number}"


def claim_redis_db() -> str:
    """A Redis database of its own for one stack, emptied (queues, unacked messages and
    mailboxes of earlier runs). Stacks of concurrent test runs must not share a broker: their
    workers would take each other's messages. Databases 7-15 are tried in turn."""
    owner = f"{os.getpid()}-{time.monotonic_ns()}"
    for number in range(FIRST_REDIS_DB, LAST_REDIS_DB + 1):
        url = redis_url(number)
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            holder = client.get(CLAIM_KEY)
            if holder is not None and not _alive(holder):
                client.delete(CLAIM_KEY)  # a run that was killed: its claim is free again
            if client.set(CLAIM_KEY, owner, nx=True, ex=CLAIM_SECONDS):
                with client.pipeline(transaction=True) as pipe:
                    pipe.flushdb()
                    pipe.set(CLAIM_KEY, owner, ex=CLAIM_SECONDS)
                    pipe.execute()
                return url
        except redis.RedisError as exc:
            pytest.fail(f"Redis does not answer at {url} ({exc}); run `make services`")
        finally:
            client.close()
    pytest.fail(f"Redis databases {FIRST_REDIS_DB}-{LAST_REDIS_DB} are all taken by test runs")


def _alive(holder: bytes) -> bool:
    """Whether the test process that claimed a database (``<pid>-<ns>``) still runs here."""
    try:
        os.kill(int(holder.split(b"-", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def release_redis_db(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()  # also drops the claim
    finally:
        client.close()


class Process:
    """A child process in its own process group (so a signal reaches its pool children too)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, nothing gets to clean up."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL if it does not end in time."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=10)
        # Pool children that outlived their parent would keep consuming the queue.
        self._signal_group(signal.SIGKILL)


class Stack:
    """The app (driven through its test client) plus the worker processes behind it."""

    def __init__(self, app: Flask, database_url: str, workdir: Path, env: dict[str, str]) -> None:
        self.app = app
        self.database_url = database_url
        self.workdir = workdir
        self.env = env
        self.processes: list[Process] = []
        self._apis: dict[str, Api] = {}

    # ---- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], **extra_env: str) -> Process:
        process = Process(name, argv, {**self.env, **extra_env}, self.workdir)
        self.processes.append(process)
        return process

    def start_worker(
        self,
        name: str | None = None,
        concurrency: int = 2,
        queues: str = "registry,registry-tests,registry-control",
    ) -> Process:
        """A worker as operators start it: ``llm-registry worker``; with ``name``, the same
        command through ``celery`` directly so that it gets the node name ``name@NODE_HOST``
        (what ``jobs.worker`` records) and consumes only ``queues``."""
        if name is None:
            argv = [str(BIN / "llm-registry"), "worker", "--concurrency", str(concurrency)]
            process = self._spawn(f"worker-{len(self.processes)}", argv)
            self.wait_ready(process, None)
            return process
        argv = [
            str(BIN / "celery"),
            "-A",
            "celery_app:celery",
            "worker",
            "--queues",
            queues,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@{NODE_HOST}",
        ]
        process = self._spawn(name, argv)
        self.wait_ready(process, f"{name}@{NODE_HOST}")
        return process

    def start_beat(self, **extra_env: str) -> Process:
        """``llm-registry beat``; ``extra_env`` on top of the stack's (say, a short
        ``COMPLIANCE_SCAN_INTERVAL_SECONDS``)."""
        return self._spawn("beat", [str(BIN / "llm-registry"), "beat"], **extra_env)

    def start_relay(self, name: str = "relay", **extra_env: str) -> Process:
        """``llm-registry relay`` (publishes the outbox to ``NATS_URL``)."""
        return self._spawn(name, [str(BIN / "llm-registry"), "relay"], **extra_env)

    def wait_ready(self, process: Process, node: str | None, timeout: float = 60) -> None:
        """Until the worker answers a broker ping (it then consumes the queue)."""
        control = self.app.extensions["task_producer"].control
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive():
                pytest.fail(f"{process.name} exited:\n{process.log_tail()}", pytrace=False)
            destination = [node] if node else None
            if control.ping(destination=destination, timeout=0.5, limit=1):
                return
        pytest.fail(f"{process.name} not ready in {timeout} s:\n{process.log_tail()}")

    def send_task(self, name: str, args: list[Any] | None = None) -> None:
        self.app.extensions["task_producer"].send_task(name, args=args or [], queue="registry")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(2500)}" for p in self.processes)

    # ---- the API -------------------------------------------------------------------------

    def api(self, role: str) -> Api:
        """A client logged in as the stack's user with ``role``."""
        if role not in self._apis:
            self._apis[role] = login(self.app.test_client(), f"pipe-{role}")
        return self._apis[role]

    def register(self, body: dict[str, Any], role: str = "developer") -> dict[str, Any]:
        """POST /v1/assets; asserts the 202 and returns the asset document (with ``job``)."""
        response = self.api(role).post("/v1/assets", json=body)
        assert response.status_code == 202, response.get_json()
        doc: dict[str, Any] = response.get_json()
        assert response.headers["Location"] == f"/v1/jobs/{doc['job']['id']}"
        assert doc["status"] == "pending"
        return doc

    def wait_job(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        """GET /v1/jobs/{id} until it is succeeded or failed; fails after ``timeout`` s."""
        api = self.api("viewer")
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = api.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.get_json()
            doc = response.get_json()
            if doc["status"] in FINISHED:
                return doc
            time.sleep(0.05)
        pytest.fail(f"job {job_id} not finished after {timeout} s: {doc}\n{self.logs()}")

    def settle(
        self, body: dict[str, Any], timeout: float = 30
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Register ``body`` and wait for its job: (job document, asset document)."""
        doc = self.register(body)
        job = self.wait_job(doc["job"]["id"], timeout)
        return job, self.asset(doc["id"])

    def asset(self, asset_id: str) -> dict[str, Any]:
        response = self.api("viewer").get(f"/v1/assets/{asset_id}")
        assert response.status_code == 200, response.get_json()
        doc: dict[str, Any] = response.get_json()
        return doc

    # ---- rows ----------------------------------------------------------------------------

    def query(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a fresh app context (a separate session from requests')."""
        with self.app.app_context():
            try:
                return work(db.session())
            finally:
                db.session.remove()

    def events(self, asset_id: str | None = None) -> list[Event]:
        """The committed outbox rows (of one asset, if given) in feed order."""
        query = select(Event).where(Event.seq.is_not(None)).order_by(Event.seq)
        if asset_id is not None:
            query = query.where(Event.asset_id == asset_id)
        return self.query(lambda s: list(s.scalars(query)))

    def wait_outbox_drained(self, timeout: float = 60) -> None:
        """Until no committed event waits to be published; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        pending = -1
        while time.monotonic() < deadline:
            pending = self.query(
                lambda s: s.scalar(select(func.count()).where(Event.published_at.is_(None))) or 0
            )
            if pending == 0:
                return
            time.sleep(0.1)
        pytest.fail(f"{pending} events still pending after {timeout} s\n{self.logs()}")


def build_stack(workdir: Path, suffix: str, broker: str, **extra_env: str) -> Stack:
    """A migrated, committing app on a new database, with one user per role; no worker yet."""
    database_url = fresh_pg_database(suffix)
    env = {
        "REGISTRY_ENV": "production",
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": database_url,
        "REDIS_URL": broker,
        "CELERY_BROKER_URL": broker,
        "BLOB_STORE_URL": f"file://{workdir / 'blobs'}",
        "RATE_LIMIT_ENABLED": "false",  # the tests poll far more often than 100 times a minute
        "LOG_LEVEL": "INFO",
        **extra_env,
    }
    settings_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "LOG_LEVEL")}
    app = create_app(make_settings(database_url, workdir / "var", **settings_env))
    with app.app_context():
        upgrade()
        for role in ("viewer", "user", "developer", "admin"):
            create_user(f"pipe-{role}", PASSWORD, [role])
        db.session.remove()
    process_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    process_env.update(env, PYTHONUNBUFFERED="1")
    return Stack(app, database_url, workdir, process_env)


@contextlib.contextmanager
def running_stack(workdir: Path, suffix: str, **extra_env: str) -> Iterator[Stack]:
    """``build_stack`` on a Redis database of its own; stops and drops everything after."""
    broker = claim_redis_db()
    try:
        stack = build_stack(workdir, suffix, broker, **extra_env)
        try:
            yield stack
        finally:
            stack.stop()
            drop_pg_database(stack.database_url)
    finally:
        release_redis_db(broker)
