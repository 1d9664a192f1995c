"""Choose gunicorn's settings by measurement: for each (processes, threads) pair, the bare-Flask
ceiling, the warm authenticated ``GET /v1/assets/{id}`` and the ``POST /v1/assets`` 202 path under
wrk, the registry in service mode (PostgreSQL, Redis, two Celery worker processes) as
``bench_http.py`` runs it. Prints one table; ``llm-registry serve``'s defaults come from it
(README, "Running it for real").

    python bench/bench_gunicorn.py                     # the default matrix, 8 s per wrk run
    python bench/bench_gunicorn.py --settings 2x1,4x1 --duration 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import Registry, ceiling_server, register_lua
from loadgen import Result, best_of, require_wrk, stop_cleanly_on_sigterm

# processes x threads; threads > 1 means gunicorn's gthread worker, 1 its sync worker.
DEFAULT_SETTINGS = "2x1,4x1,6x1,2x4,4x2,4x4"


def _settings(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        workers, _, threads = item.strip().partition("x")
        pairs.append((int(workers), int(threads or 1)))
    return pairs


def measure(
    work: Path, workers: int, threads: int, duration: float, connections: tuple[int, ...]
) -> tuple[Result, Result, Result]:
    with ceiling_server(workers, threads) as (base, pid):
        ceiling, _ = best_of("ceiling", f"{base}/ping", connections, duration=duration, watch=[pid])
    (work / f"{workers}x{threads}").mkdir(parents=True, exist_ok=True)
    registry = Registry(work / f"{workers}x{threads}", workers, threads, worker_processes=2)
    try:
        registry.start()
        auth = registry.auth
        url = f"{registry.base}/v1/assets/{registry.warm_asset()}"
        watch = [registry.server.pid]
        get_one, _ = best_of("GET", url, connections, duration=duration, headers=auth, watch=watch)
        post, _ = best_of(
            "POST",
            f"{registry.base}/v1/assets",
            connections,
            duration=duration,
            headers=auth,
            lua=register_lua(f"bench/gunicorn-{workers}x{threads}-{os.getpid()}"),
            watch=watch,
        )
    finally:
        registry.stop()
    return ceiling, get_one, post


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="PROCESSESxTHREADS,...")
    parser.add_argument("--duration", type=float, default=8, help="seconds per wrk run")
    parser.add_argument("--smoke", action="store_true", help="one pair, 1 s runs: a check")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    require_wrk()
    settings = _settings(args.settings)
    connections: tuple[int, ...] = (8, 16, 32)
    if args.smoke:
        settings, args.duration, connections = settings[:1], 1, (8,)
    work = Path(tempfile.mkdtemp(prefix="bench-gunicorn-"))
    print(f"bench: {os.cpu_count()} cores, work dir {work}", flush=True)
    rows = []
    try:
        for workers, threads in settings:
            print(f"-- {workers} processes x {threads} threads", flush=True)
            rows.append(
                ((workers, threads), measure(work, workers, threads, args.duration, connections))
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{os.cpu_count()} cores; best concurrency of {connections} per cell; req/s (p99 ms)")
    print(
        f"{'processes x threads':<20} {'worker':<8} {'ceiling':>16} {'GET asset':>16} "
        f"{'POST 202':>16} {'GET/ceiling':>12} {'errors':>7}"
    )
    for (workers, threads), (ceiling, get_one, post) in rows:
        cells = [f"{r.rps:>8,.0f} ({r.p99_ms:>5.1f})" for r in (ceiling, get_one, post)]
        ratio = get_one.rps / ceiling.rps if ceiling.rps else 0.0
        errors = ceiling.errors + get_one.errors + post.errors
        kind = "gthread" if threads > 1 else "sync"
        print(
            f"{f'{workers} x {threads}':<20} {kind:<8} {cells[0]:>16} {cells[1]:>16} "
            f"{cells[2]:>16} {ratio:>12.0%} {errors:>7}"
        )


if __name__ == "__main__":
    main()
