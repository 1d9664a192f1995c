"""The live registry the end-to-end tests talk to: ``llm-registry run`` as ``make run`` starts
it, in the embedded default (SQLite, files, in-process worker) or in service mode (PostgreSQL,
and NATS with the relay)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from config import ENV_NAMES
from tests.conftest import drop_pg_database, fresh_pg_database
from tests.integration.nats_support import SHARED_NATS_URL, require_nats

ADMIN_PASSWORD = "e2e-admin-password-123"
VARIANTS = ["embedded", "postgres"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self,
        base: str,
        process: subprocess.Popen[bytes],
        workdir: Path,
        nats: bool,
        worker_metrics: str,
    ) -> None:
        self.nats = nats
        self.worker_metrics = worker_metrics
        self.base = base
        self.process = process
        self.workdir = workdir
        self.session = requests.Session()

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
        response = self.session.post(
            f"{self.base}/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@contextlib.contextmanager
def start_server(
    variant: str, workdir: Path, *, kill_after: float | None = None
) -> Iterator[Server]:
    """Run ``llm-registry run`` in ``workdir`` (its ./var is the server's) until the block ends;
    ``variant`` is ``embedded`` or ``postgres``.

    At the end the server gets SIGTERM and must stop within 30 s. With ``kill_after``, for
    tests that are not about shutting down, it is killed after that many seconds instead.
    """
    port = _free_port()
    worker_metrics_port = _free_port()
    database_url = None
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(
        REGISTRY_ENV="development",
        REGISTRY_ADMIN_USERNAME="admin",
        REGISTRY_ADMIN_PASSWORD=ADMIN_PASSWORD,
        LOG_LEVEL="INFO",
        RATE_LIMIT_ENABLED="false",  # paging through 1,000 assets is well over 100 requests/min
    )
    if variant == "postgres":
        # Service mode for the parts that matter here: PostgreSQL, and NATS with the relay.
        require_nats(SHARED_NATS_URL)
        database_url = fresh_pg_database("_e2e")
        env["DATABASE_URL"] = database_url
        env["NATS_URL"] = SHARED_NATS_URL
    exe = Path(sys.executable).parent / "llm-registry"
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [str(exe), "run", "--port", str(port), "--worker-metrics-port", str(worker_metrics_port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return (workdir / "server.log").read_text(errors="replace")[-6000:]

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server exited: {log_tail()}")
            try:
                if requests.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or too busy to answer in 1 s
                time.sleep(0.2)
        else:
            pytest.fail(f"server did not come up in 60 s: {log_tail()}")
        yield Server(
            base,
            process,
            workdir,
            nats="NATS_URL" in env,
            worker_metrics=f"http://127.0.0.1:{worker_metrics_port}/metrics",
        )
    finally:
        # `llm-registry run` stops everything when one of its processes exits: if it is gone
        # (or going) already, the test saw refused connections, and the log says why.
        died = process.poll()
        hung = False
        if died is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30 if kill_after is None else kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                hung = kill_after is None
        log.close()
        if database_url:
            drop_pg_database(database_url)
        if died is not None:
            pytest.fail(f"the server exited ({died}) before the test ended: {log_tail()}")
        if hung:
            pytest.fail(f"server did not stop within 30 s of SIGTERM: {log_tail()}")
        if kill_after is None and process.returncode != 0:
            pytest.fail(f"the server stopped with {process.returncode}: {log_tail()}")


@pytest.fixture(params=VARIANTS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A registry of its own for each test, in each variant."""
    with start_server(request.param, tmp_path) as live:
        yield live
