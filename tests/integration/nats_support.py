"""NATS JetStream for the event tests: the machine's server on 127.0.0.1:4222, and private
``nats-server`` processes on free loopback ports that a test may stop and start again (its
JetStream store survives in a directory of the test's).

A server that is missing fails the test; it never turns into a skip.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

SHARED_NATS_URL = "nats://127.0.0.1:4222"
STREAM = "REGISTRY_EVENTS"


def require_nats(url: str = SHARED_NATS_URL) -> None:
    """Fail (never skip) when no NATS server greets at ``url``."""
    host, port = url.removeprefix("nats://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            sock.settimeout(3)
            if not sock.recv(64).startswith(b"INFO "):
                pytest.fail(f"{url} is not a NATS server")
    except OSError as exc:
        pytest.fail(f"NATS does not answer at {url} ({exc}); run `make services`")


class NatsServer:
    """A private ``nats-server -js`` on a loopback port of its own."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).is_file():
            pytest.fail("nats-server is not installed (Debian package nats-server)")
        self.binary = binary
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
                pytest.fail(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(64).startswith(b"INFO "):
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail("nats-server did not start in 15 s")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an operator's restart does."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


@dataclass
class Message:
    subject: str
    headers: dict[str, str]
    event: dict[str, Any]


def read_stream(
    url: str, subject: str, expected: int, timeout: float = 60, grace: float = 1.0
) -> list[Message]:
    """Everything stream ``REGISTRY_EVENTS`` holds on ``subject`` (wildcards allowed), in stream
    order, through a fresh ordered consumer: waits for ``expected`` messages (up to
    ``timeout``), then ``grace`` seconds more so that any extra copy shows up too."""

    async def read() -> list[Message]:
        import nats

        nc = await nats.connect(servers=[url], connect_timeout=3)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True)
            messages: list[Message] = []
            deadline = time.monotonic() + timeout
            while len(messages) < expected and time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=1)
                except TimeoutError:
                    continue
                messages.append(Message(msg.subject, dict(msg.headers or {}), json.loads(msg.data)))
            while True:
                try:
                    msg = await sub.next_msg(timeout=grace)
                except TimeoutError:
                    break
                messages.append(Message(msg.subject, dict(msg.headers or {}), json.loads(msg.data)))
            await sub.unsubscribe()
            return messages
        finally:
            await nc.close()

    return asyncio.run(read())
