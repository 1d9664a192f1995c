"""The registry under load, in service mode, next to the ceiling of a bare Flask app.

    .venv/bin/python bench/bench_http.py [--duration 10] [--workers 2] [--threads 4]
                                         [--graph-assets 100000] [--list-assets 1000000]
                                         [--compare-mlflow] [--smoke]

Starts, in a temporary directory, the registry as an operator would: ``llm-registry serve``
(gunicorn) on a fresh PostgreSQL database, Redis for cache, broker and revocation state, and
``llm-registry worker`` processes. Then drives it with ``wrk`` on loopback, every load bounded in
time, and prints one table (req/s, p50, p99, errors, peak RSS of the server) with the targets of
issue 8 beside the figures. Each load runs at several concurrencies; a row shows the one with
the highest req/s whose p99 meets the row's objective (else the lowest p99), and every run is
printed after the table:

- the ceiling: a bare Flask app returning a small JSON under the same gunicorn settings;
- ``GET /v1/assets/{id}`` authenticated and warm (the read-through cache);
- ``GET /v1/assets`` with filters, on a small table and on ``--list-assets`` rows;
- ``POST /v1/assets`` (the 202 path: a new version per request), once with the worker paused
  (stopped, then started again: the API alone, as with workers on other machines) and once
  with it consuming on the same cores;
- registrations completed end to end per second (two worker processes, tiny blobs);
- ``GET /v1/assets/{id}/dependencies`` and ``/dependents`` over ``--graph-assets`` assets in
  chains of depth 50;
- with ``--compare-mlflow``, MLflow's Model Registry on the same machine, the same database kind
  and the same number of web worker processes (bench/bench_mlflow.py; MLflow 3 serves
  with uvicorn), and the ratios.

Checksum throughput next to ``openssl dgst -sha256`` is bench/bench_blobs.py (``make bench``
runs both). Rate limiting is off here: the limits are per user, and one user sends everything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import HEADER, Result, best_of, run_wrk, stop_cleanly_on_sigterm, wait_http

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
PASSWORD = "bench-password-123"
JWT_SECRET = "bench-" + "s" * 40
CHAIN_DEPTH = 50
# A test run's claim on a Redis database (tests/integration/pipeline_support.py): the smoke
# tests hand the bench a database of its own, which it empties but must not give up.
CLAIM_KEY = "llm-registry-tests:owner"
CEILING_APP = ROOT / "bench" / "ceiling.py"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def empty_redis(url: str) -> None:
    """Empty the bench's Redis database (broker, cache and revocations of an earlier run),
    keeping the claim on it of the test run that started this bench, if there is one."""
    client = redis.Redis.from_url(url)
    try:
        claim, ttl = client.get(CLAIM_KEY), client.ttl(CLAIM_KEY)
        with client.pipeline(transaction=True) as pipe:
            pipe.flushdb()
            if claim is not None:
                pipe.set(CLAIM_KEY, claim, ex=ttl if ttl > 0 else 3600)
            pipe.execute()
    finally:
        client.close()


@dataclasses.dataclass
class Target:
    text: str
    met: bool | None = None

    def mark(self) -> str:
        return {True: "ok", False: "MISSED", None: ""}[self.met]


# ---- processes -----------------------------------------------------------------------------------


class Registry:
    """The registry in service mode, its processes in their own process groups."""

    def __init__(self, work: Path, workers: int, threads: int, worker_processes: int) -> None:
        self.work = work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database = f"llmreg_bench_{os.getpid()}"
        self.database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "NATS_URL"):
            self.env.pop(name, None)
        self.env.update(
            REGISTRY_ENV="production",
            JWT_SECRET=JWT_SECRET,
            DATABASE_URL=self.database_url,
            REDIS_URL=REDIS_URL,
            BLOB_STORE_URL=f"file://{work / 'blobs'}",
            SERVER_HOST="127.0.0.1",
            SERVER_PORT=str(self.port),
            REGISTRY_ADMIN_USERNAME="bench",
            REGISTRY_ADMIN_PASSWORD=PASSWORD,
            RATE_LIMIT_ENABLED="false",
            LOG_LEVEL="WARNING",
        )
        self.workers, self.threads, self.worker_processes = workers, threads, worker_processes
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log = (work / "processes.log").open("ab")

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv,
            cwd=self.work,
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.database}"')
        empty_redis(REDIS_URL)
        subprocess.run(
            [BIN / "llm-registry", "migrate"],
            cwd=self.work,
            env=self.env,
            check=True,
            stdout=self.log,
            stderr=self.log,
            timeout=300,
        )
        self.server = self._spawn(
            [
                str(BIN / "llm-registry"),
                "serve",
                "--workers",
                str(self.workers),
                "--threads",
                str(self.threads),
            ]
        )
        self.start_worker()
        # Beat, as in any deployment: it folds the trigger-kept counts that list totals read.
        self.beat = self._spawn([str(BIN / "llm-registry"), "beat"])
        wait_http(f"{self.base}/health/live")
        self.token = self.login()

    def start_worker(self) -> None:
        self.worker = self._spawn(
            [
                str(BIN / "llm-registry"),
                "worker",
                "--concurrency",
                str(self.worker_processes),
                "--queues",
                "registry,registry-tests,registry-control",
            ]
        )

    def stop_worker(self) -> None:
        """Celery's warm shutdown: the tasks running finish, the ones taken but not begun go
        back to the broker."""
        os.killpg(self.worker.pid, signal.SIGTERM)
        self.worker.wait(timeout=60)
        self.processes.remove(self.worker)

    def warm_asset(self) -> str:
        """Register a model to read back and read it until every process's pools and the
        cache are warm; returns its id."""
        created = requests.post(
            f"{self.base}/v1/assets",
            json={"asset_type": "model", "name": "bench/read", "version": "1.0.0"},
            headers=self.auth,
            timeout=30,
        )
        created.raise_for_status()
        asset_id = str(created.json()["id"])
        time.sleep(1)  # its job runs meanwhile; warm reads come after
        for _ in range(10 * self.workers):
            requests.get(f"{self.base}/v1/assets/{asset_id}", headers=self.auth, timeout=10)
        return asset_id

    def login(self) -> str:
        response = requests.post(
            f"{self.base}/v1/auth/login",
            json={"username": "bench", "password": PASSWORD},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def sql(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url.replace("+psycopg", ""), autocommit=True)

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.log.close()
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@contextlib.contextmanager
def workers_paused(registry: Registry) -> Iterator[None]:
    """No Celery worker runs meanwhile (stopped, then started again): the 202 path measured on
    its own, as when the workers run on other machines. What is sent meanwhile waits in the
    broker; what the worker had taken but not begun goes back there at its warm shutdown."""
    registry.stop_worker()
    try:
        yield
    finally:
        registry.start_worker()


@contextlib.contextmanager
def ceiling_server(workers: int, threads: int) -> Iterator[tuple[str, int]]:
    """bench/ceiling.py under gunicorn with the registry's worker settings."""
    port = free_port()
    argv = [
        str(BIN / "gunicorn"),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread" if threads > 1 else "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--no-control-socket",
        "--chdir",
        str(CEILING_APP.parent),
        "ceiling:app",
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping")
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


PAIRS = 3  # ceiling and read back to back, this many times


def paired_runs(
    ceiling_url: str,
    read_url: str,
    connections: int,
    *,
    count: int,
    duration: float,
    headers: dict[str, str],
    watch: tuple[int, int],
) -> list[tuple[Result, Result]]:
    """The ceiling and the warm read at the same concurrency, one right after the other,
    ``count`` times. The rows measure each load minutes apart and at its own best
    concurrency; on a shared machine the speed can drift by a third in that time, so the
    ratio of two runs seconds apart is the steadier one."""
    pairs = []
    for n in range(count):
        ceiling_run = run_wrk(
            f"ceiling, paired {n + 1}",
            ceiling_url,
            connections=connections,
            duration=duration,
            watch=[watch[0]],
        )
        read_run = run_wrk(
            f"GET /v1/assets/{{id}}, paired {n + 1}",
            read_url,
            connections=connections,
            duration=duration,
            headers=headers,
            watch=[watch[1]],
        )
        pairs.append((ceiling_run, read_run))
    return pairs


# ---- seeding -----------------------------------------------------------------------------------


def _sort_bytes(version: str) -> bytes:
    from app.assets.semver import parse_version, sort_key

    return sort_key(parse_version(version))


UNFINISHED_JOBS = "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"


def wait_until_zero(registry: Registry, query: str, what: str, timeout: float) -> None:
    """Poll ``query`` (one count) every 0.5 s until it is 0; RuntimeError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with registry.sql() as conn:
        while (row := conn.execute(query).fetchone()) != (0,):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} after {timeout:.0f} s: {row}")
            time.sleep(0.5)


def seed_assets(
    registry: Registry, count: int, start: int, prefix: str, *, chains: bool = False
) -> list[str]:
    """``count`` active-ish assets straight into PostgreSQL (generate_series), numbered from
    ``start``; with ``chains``, each is the next one's dependency in chains of CHAIN_DEPTH.
    Returns the ids of the chain heads (or a sample of ids)."""
    version_sort = _sort_bytes("1.0.0")
    end = start + count - 1
    asset_id = "'01BENCH' || lpad(i::text, 19, '0')"
    with registry.sql() as conn:
        conn.execute(
            f"""INSERT INTO asset_names (name, asset_type, created_at)
            SELECT '{prefix}' || i, (ARRAY['model','dataset','pipeline'])[1 + i %% 3],
                   now() FROM generate_series(%s::int, %s::int) i""",
            (start, end),
        )
        status = (
            "'active'"
            if chains
            else "(ARRAY['active','active','active','active','active','active','active',"
            "'deprecated','rejected','pending'])[1 + (i * 7) %% 10]"
        )
        conn.execute(
            f"""INSERT INTO assets (id, asset_type, name, version, version_key, version_sort,
                prerelease, description, annotations, status, compliance_status, created_by,
                provenance_author, size_bytes, created_at, updated_at, row_version)
            SELECT {asset_id}, (ARRAY['model','dataset','pipeline'])[1 + i %% 3],
                   '{prefix}' || i, '1.0.0', '1.0.0', %s, false,
                   'seeded asset number ' || i, '{{}}'::jsonb, {status},
                   (ARRAY['compliant','compliant','compliant','warning','non_compliant',
                          'unknown'])[1 + i %% 6],
                   'bench', 'author-' || (i %% 50), 1000 + i,
                   timestamp '2026-01-01' + (i || ' seconds')::interval,
                   timestamp '2026-01-01' + (i || ' seconds')::interval, 1
            FROM generate_series(%s::int, %s::int) i""",
            (version_sort, start, end),
        )
        conn.execute(
            f"""INSERT INTO asset_tags (asset_id, tag, position)
            SELECT {asset_id}, 'team-' || (i %% 100), 0
            FROM generate_series(%s::int, %s::int) i WHERE i %% 4 = 0""",
            (start, end),
        )
        if chains:
            conn.execute(
                f"""INSERT INTO asset_dependencies (asset_id, position, name, asset_type,
                    version_range, resolved_id, resolved_version)
                SELECT {asset_id}, 0, '{prefix}' || (i + 1),
                       (ARRAY['model','dataset','pipeline'])[1 + (i + 1) %% 3], '^1.0.0',
                       '01BENCH' || lpad((i + 1)::text, 19, '0'), '1.0.0'
                FROM generate_series(%s::int, %s::int) i
                WHERE (i - %s::int) %% {CHAIN_DEPTH} <> {CHAIN_DEPTH - 1} AND i < %s::int""",
                (start, end, start, end),
            )
    # What beat does every 10 s (registry.stats.fold_counts): the count deltas the triggers
    # wrote for the bulk load are folded into the totals before the reads begin.
    wait_until_zero(
        registry,
        "SELECT count(*) / 1000 FROM (SELECT 1 FROM status_count_deltas LIMIT 1000) d",
        "1,000 or more count deltas left unfolded by beat",
        timeout=120,
    )
    with registry.sql() as conn:
        # What autovacuum does within a minute of a bulk load: statistics, and the visibility map
        # that lets the list's COUNT and the keyset reads use index-only scans.
        conn.execute("VACUUM ANALYZE")
    step = CHAIN_DEPTH if chains else max(1, count // 1000)
    return [f"01BENCH{n:019d}" for n in range(start, end + 1, step)]


def _rotate_lua(paths: list[str]) -> str:
    """A wrk script that sends GET to each of ``paths`` in turn (per connection, from a random
    start)."""
    items = ",".join(json.dumps(p) for p in paths)
    return f"""
local paths = {{{items}}}
local i = 0
init = function(args) i = math.random(#paths) end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def register_lua(prefix: str) -> str:
    """Each request registers a new version of one model (the MLflow equivalent: a new
    version of a registered model). Versions are unique across threads and runs."""
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local started, threads = os.time(), 0
setup = function(thread)
  threads = threads + 1
  thread:set("run", started * 100 + threads)  -- a global in the thread's own Lua state
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{{"asset_type": "model", "name": "{prefix}", "version": "1.%d.%d"}}', run, counter)
  return wrk.format(nil, nil, nil, body)
end
"""


# ---- loads ---------------------------------------------------------------------------------------


CPU_KINDS = ("api", "worker pool", "worker consumer", "postgres", "redis", "bench client")


def cpu_seconds(registry: Registry) -> dict[tuple[int, int], tuple[str, float]]:
    """CPU time used so far (/proc, user + system) by each of the registry's processes, the
    machine's PostgreSQL and Redis server processes (whatever else uses them too) and this one:
    (pid, start time) -> (kind, seconds)."""
    groups = {registry.server.pid: "api", registry.worker.pid: "worker"}
    tick = os.sysconf("SC_CLK_TCK")
    used = {(os.getpid(), -1): ("bench client", time.process_time())}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name = Path(f"/proc/{entry}/comm").read_text().strip()
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        kind = groups.get(int(fields[2]))  # the process group each was started in
        if kind == "worker":  # Celery's consumer, and its pool processes forked from it
            kind = "worker consumer" if int(entry) == registry.worker.pid else "worker pool"
        elif kind is None and name == "postgres":
            kind = "postgres"
        elif kind is None and name.startswith("redis-server"):
            kind = "redis"
        if kind is not None:
            seconds = (int(fields[11]) + int(fields[12])) / tick
            used[(int(entry), int(fields[19]))] = (kind, seconds)
    return used


def cpu_used_between(
    before: dict[tuple[int, int], tuple[str, float]],
    after: dict[tuple[int, int], tuple[str, float]],
) -> dict[str, float]:
    """Seconds of CPU per kind between two ``cpu_seconds`` readings, over the processes alive
    at the second (one that exited meanwhile is missed, a new one counted from its start)."""
    spent = dict.fromkeys(CPU_KINDS, 0.0)
    for key, (kind, seconds) in after.items():
        spent[kind] += seconds - before.get(key, (kind, 0.0))[1]
    return spent


def registrations_end_to_end(
    registry: Registry, count: int, timeout: float
) -> tuple[float, int, int, dict[str, float]]:
    """Register ``count`` tiny-blob models as fast as 8 client threads can, and time until every
    job reached its verdict. Returns (completed per second, active, not active, CPU
    milliseconds per registration by process kind)."""
    # The 202 load before this one left thousands of jobs queued: they finish first, or this
    # would time the backlog rather than these registrations.
    wait_until_zero(
        registry,
        UNFINISHED_JOBS,
        "jobs still queued or running",
        timeout=600,
    )
    payload = os.urandom(512)
    digest = hashlib.sha256(payload).hexdigest()
    headers = {**registry.auth, "Content-Type": "application/octet-stream"}
    uploaded = requests.post(f"{registry.base}/v1/blobs", data=payload, headers=headers, timeout=30)
    uploaded.raise_for_status()
    name = f"e2e-{os.getpid()}"
    queue = list(range(count))
    lock = threading.Lock()
    failures: list[str] = []
    host, port = "127.0.0.1", registry.port
    send_headers = {**registry.auth, "Content-Type": "application/json"}

    def client() -> None:
        # http.client on one keep-alive connection: the client shares the machine's two cores
        # with what it measures, and requests' sessions cost several times its CPU per call.
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    n = queue.pop()
                body = json.dumps(
                    {
                        "asset_type": "model",
                        "name": name,
                        "version": f"2.0.{n}",
                        "checksum": {"algorithm": "SHA256", "value": digest},
                    }
                )
                connection.request("POST", "/v1/assets", body=body, headers=send_headers)
                response = connection.getresponse()
                text = response.read()
                if response.status != 202:
                    failures.append(text[:200].decode(errors="replace"))
        except (OSError, http.client.HTTPException) as exc:  # surfaced below, not lost
            failures.append(repr(exc))
        finally:
            connection.close()

    cpu_before = cpu_seconds(registry)
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} registrations refused, e.g. {failures[0]}")
    deadline = time.monotonic() + timeout
    with registry.sql() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FROM assets "
                "WHERE name = %s AND status IN ('active', 'rejected')",
                (name,),
            ).fetchone()
            assert row is not None
            if row[1] >= count:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        active, finished = int(row[0]), int(row[1])
    cpu_after = cpu_seconds(registry)
    if finished < count:
        raise RuntimeError(f"only {finished} of {count} registrations finished in {timeout} s")
    spent = cpu_used_between(cpu_before, cpu_after)
    per_registration = {kind: 1000 * seconds / count for kind, seconds in spent.items()}
    return count / elapsed, active, finished - active, per_registration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    # llm-registry serve's defaults (bench/bench_gunicorn.py chose them).
    parser.add_argument(
        "--workers", type=int, default=2 * (os.cpu_count() or 1), help="gunicorn processes"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn process")
    parser.add_argument("--graph-assets", type=int, default=100_000)
    parser.add_argument("--list-assets", type=int, default=1_000_000)
    parser.add_argument("--registrations", type=int, default=1000, help="end-to-end count")
    parser.add_argument("--compare-mlflow", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: a check")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    if args.smoke:
        args.duration, args.graph_assets, args.list_assets, args.registrations = 1, 500, 2000, 20
    connections = (4, 16, 32) if not args.smoke else (8,)
    rows: list[tuple[Result, Target]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    print(f"bench: {os.cpu_count()} cores, work dir {work}", flush=True)
    t0 = time.monotonic()

    runs: list[Result] = []  # every concurrency tried, printed after the table
    pairs: list[tuple[Result, Result]] = []  # (ceiling, GET) runs back to back
    # The ceiling stays up until the read has been measured beside it (paired runs below).
    ceiling_up = contextlib.ExitStack()
    try:
        ceiling_base, ceiling_pid = ceiling_up.enter_context(
            ceiling_server(args.workers, args.threads)
        )
        ceiling, tried = best_of(
            "ceiling: bare Flask JSON (bench/ceiling.py)",
            f"{ceiling_base}/ping",
            connections,
            p99_slo_ms=25,
            duration=args.duration,
            watch=[ceiling_pid],
        )
    except BaseException:
        ceiling_up.close()
        raise
    runs += tried
    rows.append((ceiling, Target("reference")))

    registry = Registry(work, args.workers, args.threads, worker_processes=2)
    try:
        registry.start()
        watch = [registry.server.pid]
        auth = registry.auth
        asset_id = registry.warm_asset()

        get_one, tried = best_of(
            "GET /v1/assets/{id} (auth, warm)",
            f"{registry.base}/v1/assets/{asset_id}",
            (*connections, 64) if not args.smoke else connections,
            p99_slo_ms=25,
            duration=args.duration,
            headers=auth,
            watch=watch,
        )
        runs += tried
        with ceiling_up:
            pairs = paired_runs(
                f"{ceiling_base}/ping",
                f"{registry.base}/v1/assets/{asset_id}",
                get_one.connections,
                count=PAIRS if not args.smoke else 1,
                duration=args.duration,
                headers=auth,
                watch=(ceiling_pid, registry.server.pid),
            )
        ratio = get_one.rps / ceiling.rps if ceiling.rps else 0
        shares = [g.rps / c.rps for c, g in pairs if c.rps]
        paired = statistics.median(shares) if shares else 0.0
        rows.append(
            (
                get_one,
                Target(
                    f">= 2,000 req/s, >= 60% of ceiling ({ratio:.0%}; paired {paired:.0%}), "
                    "p99 <= 25 ms",
                    get_one.rps >= 2000 and ratio >= 0.6 and get_one.p99_ms <= 25,
                ),
            )
        )

        def registrations(name: str, model: str) -> Result:
            """POST load: each request registers a new version of ``model``."""
            best, tried = best_of(
                name,
                f"{registry.base}/v1/assets",
                connections,
                p99_slo_ms=50,
                duration=args.duration,
                headers=auth,
                lua=register_lua(f"{model}-{os.getpid()}"),
                watch=watch,
            )
            runs.extend(tried)
            return best

        with workers_paused(registry):
            post_alone = registrations("POST /v1/assets (202), workers paused", "bench/alone")
        # What the paused runs queued is done before the workers' own load is measured.
        wait_until_zero(
            registry,
            UNFINISHED_JOBS,
            "jobs queued while the workers were paused",
            timeout=900,
        )
        rows.append(
            (
                post_alone,
                Target(
                    ">= 500 req/s, p99 <= 50 ms (the API alone)",
                    post_alone.rps >= 500 and post_alone.p99_ms <= 50,
                ),
            )
        )
        post = registrations("POST /v1/assets (202), workers consuming", "bench/write")
        rows.append(
            (post, Target(">= 500 req/s, p99 <= 50 ms", post.rps >= 500 and post.p99_ms <= 50))
        )

        per_second, _active, rejected, e2e_cpu = registrations_end_to_end(
            registry, args.registrations, timeout=max(120.0, args.registrations / 5)
        )
        e2e = Result(
            f"registrations completed end to end (x{args.registrations})",
            args.registrations,
            args.registrations / per_second,
            rejected,
            0,
            0,
            0,
            8,
        )
        rows.append((e2e, Target(">= 100 /s (2 worker processes)", per_second >= 100)))

        heads = seed_assets(registry, args.graph_assets, 0, "g", chains=True)
        deps, tried = best_of(
            f"GET dependencies, depth {CHAIN_DEPTH - 1} ({args.graph_assets:,} assets)",
            registry.base,
            connections,
            p99_slo_ms=50,
            duration=args.duration,
            headers=auth,
            lua=_rotate_lua([f"/v1/assets/{h}/dependencies" for h in heads[:500]]),
            watch=watch,
        )
        runs += tried
        rows.append((deps, Target("p99 <= 50 ms", deps.p99_ms <= 50)))
        tails = [f"01BENCH{int(h[7:]) + CHAIN_DEPTH - 1:019d}" for h in heads[:500]]
        dependents, tried = best_of(
            f"GET dependents, depth {CHAIN_DEPTH - 1} ({args.graph_assets:,} assets)",
            registry.base,
            connections,
            p99_slo_ms=50,
            duration=args.duration,
            headers=auth,
            lua=_rotate_lua([f"/v1/assets/{t}/dependents" for t in tails]),
            watch=watch,
        )
        runs += tried
        rows.append((dependents, Target("p99 <= 50 ms", dependents.p99_ms <= 50)))

        more = args.list_assets - args.graph_assets
        if more > 0:
            print(f"seeding {more:,} more assets ...", flush=True)
            seeded_at = time.monotonic()
            seed_assets(registry, more, args.graph_assets, "l")
            print(f"  {time.monotonic() - seeded_at:.0f} s", flush=True)
        day = dt.date(2026, 1, 1) + dt.timedelta(days=3)
        filters = [
            "/v1/assets?asset_type=dataset&status=active&limit=50",
            "/v1/assets?status=deprecated&sort=created_at&order=asc&limit=50",
            # 1% of the assets (seed_assets tags every fourth with team-(i % 100)).
            "/v1/assets?tag=team-8&limit=50",
            "/v1/assets?author=author-3&asset_type=model&limit=50",
            f"/v1/assets?created_after={day}T00:00:00Z&created_before={day}T06:00:00Z&limit=50",
            "/v1/assets?compliance=non_compliant&sort=name&limit=50",
            "/v1/assets?sort=size_bytes&order=desc&limit=50",
            "/v1/assets?q=number%20424242&limit=50",
            "/v1/assets?name=l500000",
            "/v1/assets?sort=version&limit=50",
        ]
        lists, tried = best_of(
            f"GET /v1/assets, 10 filter/sort mixes ({args.list_assets:,} assets)",
            registry.base,
            connections,
            p99_slo_ms=100,
            duration=args.duration,
            headers=auth,
            lua=_rotate_lua(filters),
            watch=watch,
        )
        runs += tried
        rows.append((lists, Target("p99 <= 100 ms", lists.p99_ms <= 100)))
        slowest = []
        for path in filters:  # which filter costs what, once each, warm
            requests.get(f"{registry.base}{path}", headers=auth, timeout=60)
            started = time.perf_counter()
            response = requests.get(f"{registry.base}{path}", headers=auth, timeout=60)
            slowest.append(((time.perf_counter() - started) * 1000, response.status_code, path))
    finally:
        ceiling_up.close()
        registry.stop()

    mlflow: dict[str, Result] = {}
    if args.compare_mlflow:
        from bench_mlflow import run_mlflow

        mlflow = run_mlflow(duration=args.duration, workers=args.workers, connections=connections)

    print()
    print(f"{os.cpu_count()} cores; gunicorn {args.workers} processes x {args.threads} threads")
    print(HEADER + "  target")
    for result, target in rows:
        print(f"{result.row()}  {target.text} {target.mark()}")
    print(
        "(each row: the concurrency with the highest req/s whose p99 meets the row's objective, "
        "else the lowest p99)"
    )
    print()
    print("every concurrency tried:")
    for result in runs:
        print(result.row())
    print()
    print(
        f"the read next to the ceiling, back to back at {get_one.connections} connections "
        "(each pair within seconds, so that the machine's drift between the rows above "
        "does not enter the ratio):"
    )
    for ceiling_run, read_run in pairs:
        share = read_run.rps / ceiling_run.rps if ceiling_run.rps else 0
        print(f"  ceiling {ceiling_run.rps:8,.0f}  read {read_run.rps:8,.0f}  {share:5.0%}")
    print(f"  median {paired:.0%}")
    print()
    print(
        "CPU per registration end to end (ms, /proc, processes alive at the end; PostgreSQL "
        "and Redis: the whole servers):"
    )
    print("  " + ", ".join(f"{kind} {e2e_cpu[kind]:.2f}" for kind in CPU_KINDS))
    print()
    print("single requests on the largest table (ms, status, path):")
    for ms, status, path in sorted(slowest, reverse=True):
        print(f"  {ms:8.1f}  {status}  {path}")
    if mlflow:
        print()
        print("MLflow Model Registry, same machine, same database kind, same worker count:")
        print(HEADER)
        for result in mlflow.values():
            print(result.row())
        read_ratio = get_one.rps / mlflow["get"].rps
        write_ratio = post.rps / mlflow["create"].rps
        alone_ratio = post_alone.rps / mlflow["create"].rps
        list_ratio = lists.rps / mlflow["search"].rps if "search" in mlflow else 0
        print()
        print(f"GET asset vs model-versions/get:      {read_ratio:6.1f}x  (target >= 15x)")
        print(f"POST asset vs model-versions/create:  {write_ratio:6.1f}x  (target >= 6x)")
        print(f"  the same, workers paused:            {alone_ratio:6.1f}x")
        print(f"GET /v1/assets (1M, filtered) vs registered-models/search: {list_ratio:6.1f}x")
    print(f"\nbench took {time.monotonic() - t0:.0f} s")
    if args.json:
        figures: dict[str, Any] = {r.name: {**dataclasses.asdict(r), "rps": r.rps} for r, _ in rows}
        figures["cpu ms per registration"] = e2e_cpu
        figures["read vs ceiling, paired"] = [
            {
                "connections": c.connections,
                "ceiling": c.rps,
                "read": g.rps,
                "errors": c.errors + g.errors,
            }
            for c, g in pairs
        ]
        for key, result in mlflow.items():
            figures[f"mlflow {key}"] = {**dataclasses.asdict(result), "rps": result.rps}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
