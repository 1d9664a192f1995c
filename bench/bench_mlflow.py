"""MLflow's Model Registry under the registry's loads, on the same machine and database kind.

    .venv/bin/python bench/bench_mlflow.py [--duration 10] [--workers 2] [--smoke]

MLflow lives in its own virtualenv (``var/bench/mlflow-venv``, made once and reused), never in
the project's. Each run gets a fresh PostgreSQL database ``mlflow_bench_<pid>`` and an
``mlflow server`` (uvicorn, ``--workers`` processes like the registry's gunicorn) on a free
loopback port, in its own process group; both are removed at the end, also on errors, Ctrl-C
and SIGTERM. Three wrk loads, each bounded in time, the best of a few concurrencies each:

- ``get``: ``GET model-versions/get`` of one seeded version (the read path);
- ``create``: ``POST model-versions/create``, a new version of one model per request;
- ``search``: ``GET registered-models/search?max_results=50`` over a few hundred models.

``run_mlflow()`` is what bench/bench_http.py imports (``--compare-mlflow``) to print ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import HEADER, Result, best_of, stop_cleanly_on_sigterm, wait_http

MLFLOW_VERSION = "3.17.2"
REQUIREMENTS = (f"mlflow=={MLFLOW_VERSION}", "psycopg2-binary==2.9.13")

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "var" / "bench" / "mlflow-venv"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
API = "/api/2.0/mlflow"
READ_MODEL = "bench-read"
WRITE_MODEL = "bench-write"
LIST_MODELS = 300
# A remote-looking URI is only stored: MLflow rejects a local path without a run, and no S3
# client is installed in its venv, so nothing is ever fetched from it.
SOURCE = "s3://bench-models/{name}/model"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
PIP_TIMEOUT = 1200.0
DROP = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")


def _log(message: str) -> None:
    print(f"[bench_mlflow] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the MLflow virtualenv -----------------------------------------------------------------------


def _venv_version() -> str | None:
    """The mlflow version installed in VENV, or None if the venv is missing or broken."""
    python = VENV / "bin" / "python"
    if not (python.exists() and (VENV / "bin" / "mlflow").exists()):
        return None
    probe = "import importlib.metadata as m, psycopg2; print(m.version('mlflow'))"
    try:
        completed = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def ensure_venv() -> Path:
    """VENV with the pinned MLflow and psycopg2, made (or remade, if broken or of another
    version) with ``python3 -m venv`` and pip. Returns the path of its ``mlflow`` script."""
    if _venv_version() == MLFLOW_VERSION:
        return VENV / "bin" / "mlflow"
    _log(f"creating {VENV} with {' '.join(REQUIREMENTS)} (about a minute)")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        ([sys.executable, "-m", "venv", "--clear", str(VENV)], 120.0),
        ([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS], PIP_TIMEOUT),
    ]
    for argv, timeout in steps:
        try:
            completed = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise SystemExit(f"`{' '.join(argv)}` took more than {timeout:.0f} s") from error
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr)[-3000:]
            raise SystemExit(f"`{' '.join(argv)}` failed ({completed.returncode}):\n{output}")
    found = _venv_version()
    if found != MLFLOW_VERSION:
        what = f"mlflow {found}" if found else "no importable mlflow and psycopg2"
        raise SystemExit(f"{VENV} has {what}, not mlflow {MLFLOW_VERSION}, after pip install")
    return VENV / "bin" / "mlflow"


# ---- database and server -------------------------------------------------------------------------


def _admin(statement: sql.Composed) -> None:
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(statement)
    except psycopg.OperationalError as error:
        raise SystemExit(
            f"PostgreSQL is not answering at {PG_ADMIN} ({error}). Start it (user postgres, "
            "trust auth on 127.0.0.1:5432) or set BENCH_PG_ADMIN_URL."
        ) from error


def _backend_uri(database: str) -> str:
    # SQLAlchemy 2.1 (what mlflow pulls in) maps plain postgresql:// to psycopg 3; name the
    # driver that is installed next to MLflow instead of depending on that default.
    parts = urllib.parse.urlsplit(PG_ADMIN)
    return urllib.parse.urlunsplit(
        parts._replace(scheme="postgresql+psycopg2", path=f"/{database}")
    )


@dataclasses.dataclass
class Server:
    base: str
    pid: int
    database: str
    log: Path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"mlflow server exited ({process.returncode}) before answering:\n{_tail(log)}"
            )
        with contextlib.suppress(RuntimeError):
            wait_http(f"{base}/health", timeout=2)
            return
    raise SystemExit(f"mlflow server did not answer in {START_TIMEOUT:.0f} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after a while."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)
    # uvicorn's workers may outlive the `mlflow server` process; the group goes in any case.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(workers: int) -> Iterator[Server]:
    """``mlflow server`` on a fresh database, ready to answer; stopped and dropped on exit."""
    mlflow = ensure_venv()
    database = f"mlflow_bench_{os.getpid()}"
    try:
        _admin(DROP.format(sql.Identifier(database)))
        _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as tmp:
            port = free_port()
            argv = [
                str(mlflow),
                "server",
                "--backend-store-uri",
                _backend_uri(database),
                "--default-artifact-root",
                f"file://{tmp}/artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                # The registry runs at LOG_LEVEL=WARNING: no line per request on either side.
                "--uvicorn-opts",
                "--no-access-log",
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
            env.update(
                # No usage reports leave the machine.
                MLFLOW_DISABLE_TELEMETRY="true",
                DO_NOT_TRACK="true",
                # The job runner (huey) serves none of the measured endpoints; the registry's
                # RSS figure does not count its Celery workers either.
                MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            )
            log = Path(tmp) / "server.log"
            with log.open("wb") as log_file:
                process = subprocess.Popen(
                    argv,
                    cwd=tmp,
                    env=env,
                    stdout=log_file,
                    stderr=log_file,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    _wait_ready(process, f"http://127.0.0.1:{port}", log)
                    yield Server(f"http://127.0.0.1:{port}", process.pid, database, log)
                finally:
                    _stop(process)
    finally:
        _admin(DROP.format(sql.Identifier(database)))


# ---- seeding -------------------------------------------------------------------------------------


def _call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{base}{API}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read()[:500].decode(errors="replace")
        raise RuntimeError(f"{method} {path} answered {error.code}: {detail}") from error


def _create_model(base: str, name: str) -> None:
    _call(base, "POST", "/registered-models/create", {"name": name})
    _call(
        base,
        "POST",
        "/model-versions/create",
        {"name": name, "source": SOURCE.format(name=name)},
    )


def seed(server: Server) -> None:
    """The read model with its version 1, the write model, and LIST_MODELS more models with
    one version each (so that search returns full pages with their latest versions)."""
    _create_model(server.base, READ_MODEL)
    _call(server.base, "POST", "/registered-models/create", {"name": WRITE_MODEL})
    names = [f"bench-list-{i:04d}" for i in range(LIST_MODELS)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda name: _create_model(server.base, name), names))
    found = _call(server.base, "GET", "/registered-models/search?max_results=50")
    if len(found.get("registered_models", [])) != 50:
        raise RuntimeError(f"registered-models/search after seeding: {str(found)[:300]}")


def _versions(database: str, name: str) -> int:
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(PG_ADMIN)._replace(path=f"/{database}"))
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM model_versions WHERE name = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


# ---- loads ---------------------------------------------------------------------------------------


def _create_lua() -> str:
    """Every request creates the next version of WRITE_MODEL, as MLflow's create does."""
    body = json.dumps({"name": WRITE_MODEL, "source": SOURCE.format(name=WRITE_MODEL)})
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""


def _run(
    duration: float, workers: int, connections: tuple[int, ...]
) -> tuple[dict[str, Result], list[Result]]:
    best: dict[str, Result] = {}
    every: list[Result] = []
    with mlflow_server(workers) as server:
        _log(f"server up at {server.base} (pid {server.pid}); seeding {LIST_MODELS + 2} models")
        seed(server)
        api = f"{server.base}{API}"
        common: dict[str, object] = {"duration": duration, "watch": [server.pid]}
        # search before create, so the write load's versions do not change the listed pages.
        loads = [
            (
                "get",
                "GET model-versions/get",
                f"{api}/model-versions/get?name={READ_MODEL}&version=1",
                {},
            ),
            (
                "search",
                "GET registered-models/search (50)",
                f"{api}/registered-models/search?max_results=50",
                {},
            ),
            (
                "create",
                "POST model-versions/create",
                f"{api}/model-versions/create",
                {"lua": _create_lua()},
            ),
        ]
        for key, name, url, extra in loads:
            _log(f"{name}: {len(connections)} x {duration:g} s")
            best[key], results = best_of(name, url, connections, **common, **extra)
            every.extend(results)
        created = _versions(server.database, WRITE_MODEL)
        answered = sum(r.requests - r.errors for r in every if r.name.startswith("POST "))
        _log(f"write load: {created} versions in the database, {answered} 2xx counted by wrk")
        if any(r.errors for r in every):
            _log(f"errors under load; the server's last lines:\n{_tail(server.log)}")
    return {key: best[key] for key in ("get", "create", "search")}, every


def run_mlflow(
    duration: float = 10, workers: int = 2, connections: tuple[int, ...] = (4, 16, 32)
) -> dict[str, Result]:
    """MLflow's Model Registry under the three loads, with ``workers`` uvicorn processes.

    Called by bench/bench_http.py. Keys ``get``, ``create``, ``search``; each Result is the best
    of ``connections`` (loadgen.best_of) with the peak RSS of the whole server tree. Makes the
    MLflow venv on first use; raises SystemExit if PostgreSQL, pip or the server fail.
    """
    return _run(duration, workers, connections)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--smoke", action="store_true", help="1 s runs at one concurrency")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()  # the server stopped and its database dropped on a SIGTERM too
    duration, connections = (1.0, (16,)) if args.smoke else (args.duration, (4, 16, 32))
    started, load_before = time.monotonic(), os.getloadavg()[0]
    try:
        best, every = _run(duration, args.workers, connections)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: MLflow's server is stopped, its database dropped") from None
    print()
    print(
        f"MLflow {MLFLOW_VERSION} Model Registry, PostgreSQL, uvicorn {args.workers} workers, "
        f"{os.cpu_count()} cores"
    )
    print(HEADER)
    for result in every:
        print(result.row())
    print()
    print("best of each (the knee: highest req/s with the lowest p99 within 10% of it):")
    print(HEADER)
    for result in best.values():
        print(result.row())
    # Anything else running on the two cores shows up here, and in the figures.
    print(
        f"\nbench took {time.monotonic() - started:.0f} s; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )


if __name__ == "__main__":
    main()
