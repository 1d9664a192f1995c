"""The benchmark scripts run once, in their smoke mode (seconds, tiny tables), so they cannot rot.
No timing is asserted: the figures are for `make bench`, not for the test suite."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.integration.pipeline_support import claim_redis_db, release_redis_db

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SMOKE_SECONDS = 220  # then 60 s to stop: within the suite's 300 s per test
LOADS = (
    "ceiling: bare Flask JSON",
    "GET /v1/assets/{id} (auth, warm)",
    "POST /v1/assets (202)",
    "registrations completed end to end",
    "GET dependencies, depth 49",
    "GET dependents, depth 49",
    "GET /v1/assets, 10 filter/sort mixes",
)


def _smoke(script: str, *args: str) -> str:
    """Run ``bench/<script> --smoke ARGS``; its standard output, once it exited 0. On a timeout
    the bench gets a SIGTERM, so that it stops what it started before the test fails."""
    with _bench(script, "--smoke", *args, stdout=subprocess.PIPE) as process:
        try:
            stdout, stderr = process.communicate(timeout=SMOKE_SECONDS)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                stdout, _ = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, _ = process.communicate()
            raise AssertionError(
                f"{script} --smoke ran past {SMOKE_SECONDS} s: {stdout[-3000:]}"
            ) from None
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


@contextlib.contextmanager
def _bench(script: str, *args: str, stdout: int) -> Iterator[subprocess.Popen[str]]:
    """``bench/<script> ARGS`` running on a Redis database of its own: the benches start their
    registries on an emptied database, so two at once must not share one."""
    database = claim_redis_db()
    try:
        with subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / script), *args],
            stdout=stdout,
            stderr=subprocess.PIPE if stdout == subprocess.PIPE else subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env={**os.environ, "BENCH_REDIS_URL": database},
        ) as process:
            yield process
    finally:
        release_redis_db(database)


def _children(pid: int) -> list[tuple[int, str]]:
    """The processes whose parent is ``pid``: (pid, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it exited meanwhile
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def test_a_bench_stopped_by_sigterm_stops_what_it_started() -> None:
    """The servers and workers a bench starts run in process groups of their own, out of reach
    of a signal to the bench's group: SIGTERM to the bench must still stop every one."""
    with _bench("bench_gunicorn.py", "--smoke", stdout=subprocess.DEVNULL) as bench:
        code, started = _terminated_once_up(bench)
    left = []
    for pid, cmd in started:  # each leads a process group of its own
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        left.append(cmd)
    assert not left, f"still running after the bench stopped: {left}"
    assert code == 128 + signal.SIGTERM
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:  # and its database dropped
        kept = admin.execute(
            "SELECT datname FROM pg_database WHERE datname = %s", (f"llmreg_bench_{bench.pid}",)
        ).fetchall()
    assert kept == []


def _terminated_once_up(bench: subprocess.Popen[str]) -> tuple[int, list[tuple[int, str]]]:
    """SIGTERM to ``bench`` once its registry's processes are up: its exit code, and the
    processes it had started."""
    started: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and bench.poll() is None:
            started = _children(bench.pid)
            if any("llm-registry" in cmd and "worker" in cmd for _pid, cmd in started):
                break  # the registry's server, worker and beat are up
            time.sleep(0.2)
        assert any("llm-registry" in cmd for _pid, cmd in started), started
        bench.terminate()
        return bench.wait(timeout=120), started
    finally:
        if bench.poll() is None:
            bench.kill()


def test_bench_http_smoke_runs_every_load_without_errors(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    stdout = _smoke("bench_http.py", "--json", str(figures_file))
    figures = json.loads(figures_file.read_text())
    for load in LOADS:
        name = next((n for n in figures if n.startswith(load)), None)
        assert name is not None, (load, sorted(figures))
        # Every request was answered as the load expects (2xx; end to end: every asset active).
        assert figures[name]["errors"] == 0, (name, figures[name])
        assert figures[name]["requests"] > 0 and figures[name]["rps"] > 0, (name, figures[name])
        assert name in stdout  # the table shows it
    # The read measured again right after the ceiling, at the same concurrency.
    pairs = figures["read vs ceiling, paired"]
    assert len(pairs) == 1, pairs
    assert pairs[0]["errors"] == 0 and pairs[0]["ceiling"] > 0 and pairs[0]["read"] > 0, pairs
    assert "the read next to the ceiling, back to back" in stdout
    # Where a registration's CPU went, by process kind (the API and the workers did work).
    cpu = figures["cpu ms per registration"]
    assert sorted(cpu) == sorted(
        ["api", "worker pool", "worker consumer", "postgres", "redis", "bench client"]
    ), cpu
    assert all(ms >= 0 for ms in cpu.values()) and cpu["api"] > 0 and cpu["worker pool"] > 0, cpu
    assert "CPU per registration end to end" in stdout
    singles = stdout[stdout.index("single requests") :].split("\n\n")[0]
    for line in singles.splitlines()[1:]:
        assert line.split()[1] == "200", line


def test_bench_gunicorn_smoke_prints_its_matrix() -> None:
    stdout = _smoke("bench_gunicorn.py")
    table = stdout[stdout.index("processes x threads") :].splitlines()
    assert table[1].split()[:4] == ["2", "x", "1", "sync"], table
    assert table[1].split()[-1] == "0", table  # no errors in any of the three loads
    # ceiling, GET and POST: "req/s (p99 ms)" each
    figures = re.findall(r"([\d,]+) \(\s*([\d.]+)\)", table[1])
    assert len(figures) == 3, table
    assert all(float(rps.replace(",", "")) > 0 and float(p99) > 0 for rps, p99 in figures), table
