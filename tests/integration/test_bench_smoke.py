"""The benchmark scripts run once, in their smoke mode (seconds, tiny tables), so they cannot rot.
No timing is asserted: the figures are for `make bench`, not for the test suite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
    """Run ``bench/<script> --smoke ARGS``; its standard output, once it exited 0."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


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
