"""Drive an HTTP endpoint on loopback with ``wrk`` (Debian's package) and read back its figures.

Each run is bounded (``duration`` seconds, ``connections`` connections). A Lua script may set
``wrk.method``/``wrk.body``/``wrk.headers`` or define ``request()``; this module appends a
``done()`` that prints requests/s, latency percentiles and error counts as one JSON line, so
the figures come from wrk itself, not from parsing its text.

Peak RSS: the resident set of a process tree is sampled every 50 ms while wrk runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

_DONE = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '\\nWRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclasses.dataclass
class Result:
    name: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    connections: int
    peak_rss_mb: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        return (
            f"{self.name:<44} {self.connections:>5} {self.rps:>10,.0f} {self.p50_ms:>8.2f} "
            f"{self.p99_ms:>8.2f} {self.errors:>7} {self.peak_rss_mb:>9.0f}"
        )


HEADER = (
    f"{'load':<44} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
    f"{'RSS MB':>9}"
)


def require_wrk() -> str:
    """wrk's path; installs Debian's package first when it is missing and we may (root)."""
    path = shutil.which("wrk")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"],
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "wrk is not installed: `apt-get install wrk` (Debian's package), then run again"
        )
    return path


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_mb(pids: list[int]) -> float:
    """Current resident set of these processes and their descendants, in MB."""
    total = 0
    for root in pids:
        for pid in _tree(root):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
    return total / 1024


class RssSampler:
    """Peak resident set of process trees while the ``with`` block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pids))
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        if self.pids:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def run_wrk(
    name: str,
    url: str,
    *,
    lua: str = "",
    duration: float = 10,
    connections: int = 16,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    watch: list[int] | None = None,
) -> Result:
    """One bounded wrk run against ``url`` (loopback only)."""
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise ValueError(f"load only ever goes to loopback, not {url}")
    wrk = require_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua + "\n" + _DONE)
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
    ]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    argv.append(url)
    with RssSampler(watch or []) as sampler:
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    Path(script.name).unlink(missing_ok=True)
    line = next((row for row in completed.stdout.splitlines() if row.startswith("WRK_JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr[-2000:]}")
    figures = json.loads(line.removeprefix("WRK_JSON "))
    return Result(
        name=name,
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        errors=figures["errors"],
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        connections=connections,
        peak_rss_mb=sampler.peak,
    )


def best_of(
    name: str,
    url: str,
    connection_counts: tuple[int, ...],
    *,
    p99_slo_ms: float | None = None,
    **kwargs: object,
) -> tuple[Result, list[Result]]:
    """Run at each concurrency and pick one. With ``p99_slo_ms``: the highest req/s whose p99
    stays within it (throughput at the latency objective); when none does, the lowest p99.
    Without: the lowest p99 among those within 10% of the top throughput (the knee)."""
    results = [
        run_wrk(f"{name} c={c}", url, connections=c, **kwargs)  # type: ignore[arg-type]
        for c in connection_counts
    ]
    within = [r for r in results if p99_slo_ms is not None and r.p99_ms <= p99_slo_ms]
    if within:
        best = max(within, key=lambda r: r.rps)
    elif p99_slo_ms is not None:
        best = min(results, key=lambda r: r.p99_ms)
    else:
        top = max(r.rps for r in results)
        best = min((r for r in results if r.rps >= 0.9 * top), key=lambda r: r.p99_ms)
    best = dataclasses.replace(best, name=name)
    return best, results


def stop_cleanly_on_sigterm() -> None:
    """A SIGTERM (a test's timeout, an operator's ``kill``) raises ``SystemExit`` in the main
    thread, so that every ``finally`` runs: the servers and workers a bench started in process
    groups of their own are stopped, and its databases dropped, rather than left behind."""
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")
