"""The ``llm-registry`` console script: ``serve``, ``migrate``, ``worker``, ``beat``, ``relay`` and
``run`` (everything for one machine, as ``make run`` uses it). Each takes ``--config FILE``."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from config import ConfigError, Settings, load_settings
from config.celery import prepare_broker


def _settings(config: str | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file (keys are the env names in lower case).",
)


@click.group()
def main() -> None:
    """LLM Registry processes."""
    from app.observability import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())


@main.command()
@config_option
def migrate(config: str | None) -> None:
    """Upgrade the database schema to the newest migration."""
    migrate_database(_settings(config))
    click.echo("database is at the newest migration")


def migrate_database(settings: Settings) -> None:
    from flask_migrate import upgrade

    from app import create_app

    app = create_app(settings)
    with app.app_context():
        upgrade()
        from app.extensions import db

        db.engine.dispose()


def _bootstrap_admin(settings: Settings) -> str | None:
    """Create the first admin from the settings; returns its username when created."""
    from app import create_app
    from app.extensions import db
    from app.users.service import ensure_first_admin

    app = create_app(settings)
    with app.app_context():
        user = ensure_first_admin(
            settings.registry_admin_username, settings.registry_admin_password
        )
        db.engine.dispose()  # no pooled connection may cross the fork into the server workers
    return user.username if user else None


@main.command()
@config_option
@click.option("--host", default=None, help="Address to bind (SERVER_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (SERVER_PORT).")
@click.option("--workers", type=int, default=None, help="Server processes (default: 2 x CPUs).")
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="Threads per process; above 1, gunicorn's gthread worker, else its sync worker.",
)
def serve(
    config: str | None, host: str | None, port: int | None, workers: int | None, threads: int
) -> None:
    """Serve the HTTP API with gunicorn.

    The defaults (2 x CPUs sync processes) were chosen with bench/bench_gunicorn.py: on 2 cores
    they gave the most warm reads and a write p99 as low as any of the settings tried (README,
    "Performance"). A sync process is held by one request for its whole length: where large
    uploads come from slow clients, put a buffering proxy in front or use --threads.
    """
    settings = _settings(config, server_host=host, server_port=port)
    _metrics_dir(settings, "api")  # before anything imports prometheus_client
    _bootstrap_admin(settings)
    prepare_broker(settings)  # before the first task is sent
    serve_http(settings, workers or 2 * (os.cpu_count() or 1), threads)


def _metrics_dir(settings: Settings, role: str) -> Path:
    """A fresh directory for this process group's Prometheus files (multiprocess mode: every
    scrape sums the gunicorn workers' or Celery pool processes' counts)."""
    import shutil

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    path = Path(settings.var_dir) / "prometheus" / f"{role}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def serve_http(settings: Settings, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.server_host}:{settings.server_port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("timeout", 120)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("accesslog", None)  # the app logs one JSON line per request
            self.cfg.set("logger_class", _logger_without_access_lines())
            # gunicorn answers an over-long request line with an HTML page; let the app answer
            # (problem+json, MAX_URL_LENGTH) instead.
            self.cfg.set("limit_request_line", 0)
            self.cfg.set("logconfig_dict", _gunicorn_logging(settings.log_level))
            self.cfg.set("child_exit", _forget_worker_metrics)
            # gunicorn's control socket is one path per user ($HOME/.gunicorn/gunicorn.ctl):
            # several servers on a host would take it from each other. Signals do the job.
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("post_worker_init", _freeze_startup_objects)

        def load(self) -> Any:
            from app import create_app

            return create_app(settings)

    Server().run()


def _logger_without_access_lines() -> type:
    """gunicorn's logger, but its access lines are never made: the app logs one per request,
    and with a logging config gunicorn formats each line's fields before the logger's level
    drops it (4% of a cached read's time)."""
    from gunicorn.glogging import Logger

    class NoAccessLines(Logger):
        def access(self, *_args: Any, **_kwargs: Any) -> None:
            return None

    return NoAccessLines


def _freeze_startup_objects(_worker: Any) -> None:
    """Once the worker has built the app: its objects (models, schemas, routes, SQLAlchemy's
    caches) leave the garbage collector's generations, so that a full collection during a
    request walks only what requests made (bench/bench_http.py: fewer p99 outliers)."""
    import gc

    gc.collect()
    gc.freeze()


def _forget_worker_metrics(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _gunicorn_logging(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "{asctime}{levelname}{name}{message}",
                "style": "{",
                "rename_fields": {"asctime": "timestamp", "levelname": "level", "name": "logger"},
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
    }


def _celery(args: list[str], config: str | None) -> None:
    """Replace this process with ``celery -A celery_app:celery ARGS`` (same Python)."""
    if config:
        os.environ["REGISTRY_CONFIG"] = config
    celery = Path(sys.executable).with_name("celery")
    os.execv(str(celery), [str(celery), "--quiet", "-A", "celery_app:celery", *args])  # noqa: S606


@main.command()
@config_option
@click.option(
    "--queues",
    default="registry,registry-tests,registry-control",
    show_default=True,
    help="Comma-separated queues to consume.",
)
@click.option("--concurrency", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--loglevel", default=None, help="Celery log level (default: LOG_LEVEL).")
@click.option(
    "--metrics-port",
    type=int,
    default=0,
    show_default=True,
    help="Serve the worker's Prometheus metrics (job_duration_seconds) on this port; 0: off.",
)
@click.option(
    "--metrics-host", default="0.0.0.0", show_default=True, help="Address for --metrics-port."
)
@click.option(
    "--task-events",
    is_flag=True,
    help="Send Celery task events from the start (Flower turns them on by itself while it runs).",
)
def worker(
    config: str | None,
    queues: str,
    concurrency: int | None,
    loglevel: str | None,
    metrics_port: int,
    metrics_host: str,
    task_events: bool,
) -> None:
    """Run a Celery worker for the registration pipeline."""
    settings = _settings(config)
    _metrics_dir(settings, "worker")
    prepare_broker(settings)  # before the worker declares its queues
    if metrics_port:
        os.environ["REGISTRY_WORKER_METRICS_PORT"] = str(metrics_port)
        os.environ["REGISTRY_WORKER_METRICS_HOST"] = metrics_host
    args = [
        "worker",
        "--queues",
        queues,
        "--loglevel",
        loglevel or settings.log_level,
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    if task_events:
        args.append("--task-events")
    _celery(args, config)


@main.command()
@config_option
def beat(config: str | None) -> None:
    """Run Celery beat: requeues stalled jobs and schedules compliance re-scans. Run one."""
    settings = _settings(config)
    schedule = Path(settings.var_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    _celery(["beat", "--loglevel", settings.log_level, "--schedule", str(schedule)], config)


@main.command()
@config_option
def relay(config: str | None) -> None:
    """Publish the outbox's events to NATS JetStream, in order (needs NATS_URL). Several may run:
    one leads, the others stand by."""
    from app.events.relay import run_relay

    run_relay(_settings(config))


@main.command()
@config_option
@click.option("--host", default=None, help="Address to bind (SERVER_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (SERVER_PORT).")
@click.option(
    "--worker-metrics-port",
    type=int,
    default=9808,
    show_default=True,
    help="Where the worker serves its Prometheus metrics; 0: off.",
)
def run(config: str | None, host: str | None, port: int | None, worker_metrics_port: int) -> None:
    """Everything on one machine: migrate, create the first admin, then the API, a worker,
    beat and, when NATS_URL is set, the event relay.

    The processes run as children of this one and stop with it (Ctrl-C).
    """
    os.environ.setdefault("REGISTRY_ENV", "development")
    settings = _settings(config, server_host=host, server_port=port)
    migrate_database(settings)
    prepare_broker(settings)  # once, before the API, the worker and beat share it
    username, password_note = _first_admin_for_run(settings)
    password_file = Path(settings.var_dir) / "admin-password"
    from_file = password_file.is_file() and not settings.registry_admin_password
    password_source = f"$(cat {password_file})" if from_file else "'<password>'"
    local = settings.server_host in ("127.0.0.1", "0.0.0.0")
    base = f"http://{'localhost' if local else settings.server_host}:{settings.server_port}"
    click.echo(
        f"\nLLM Registry on {base}  (API docs: {base}/docs)\n"
        f"Log in as {username!r} {password_note}:\n"
        f"  PW={password_source}\n"
        f"  curl -s -X POST {base}/v1/auth/login -H 'Content-Type: application/json' \\\n"
        f'       -d "{{\\"username\\": \\"{username}\\", \\"password\\": \\"$PW\\"}}"\n'
        "Then send 'Authorization: Bearer <access_token>' with every /v1 request.\n",
        err=True,
    )
    exe = str(Path(sys.executable).with_name("llm-registry"))
    extra = ["--config", config] if config else []
    env = dict(
        os.environ, SERVER_HOST=str(settings.server_host), SERVER_PORT=str(settings.server_port)
    )
    commands = [
        # Threads: one machine's transfers (a push, a pull) must not hold the whole API.
        [exe, "serve", "--workers", "2", "--threads", "4", *extra],
        [
            exe,
            "worker",
            "--concurrency",
            "2",
            "--metrics-port",
            str(worker_metrics_port),
            "--metrics-host",
            str(settings.server_host),
            *extra,
        ],
        [exe, "beat", *extra],
    ]
    if settings.nats_url:
        commands.append([exe, "relay", *extra])
    else:
        click.echo("NATS_URL is not set: events stay in the outbox (GET /v1/events).", err=True)
    _supervise(commands, env)


def _first_admin_for_run(settings: Settings) -> tuple[str, str]:
    """In development, invent the first admin's password if none was given, and keep it under
    ./var so the next ``make run`` can say it again."""
    username = settings.registry_admin_username or "admin"
    password_file = Path(settings.var_dir) / "admin-password"
    password = settings.registry_admin_password
    if password is None and password_file.is_file():
        password = password_file.read_text().strip()
    generated = password is None
    if password is None:
        password = secrets.token_urlsafe(12)
    import dataclasses

    created = _bootstrap_admin(
        dataclasses.replace(
            settings, registry_admin_username=username, registry_admin_password=password
        )
    )
    if created and generated:
        password_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
    if settings.registry_admin_password:
        return username, "with REGISTRY_ADMIN_PASSWORD"
    if password_file.is_file():
        # The path, not the secret: what the terminal shows may end up in a log.
        return username, f"with the password in {password_file}"
    return username, "with the password you gave it"


def _supervise(commands: list[list[str]], env: dict[str, str]) -> None:
    """Run ``commands`` as one process group: if one exits, stop the others; Ctrl-C stops all."""
    children = [subprocess.Popen(cmd, env=env) for cmd in commands]

    def stop(*_: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        for cmd, child in zip(commands, children, strict=True):
            if child.returncode is not None:  # say who ended the run: the log shows why
                click.echo(f"{cmd[1]} exited ({child.returncode}): stopping the others", err=True)
    finally:
        stop()
        deadline = time.monotonic() + 20
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
    codes = [child.returncode for child in children]
    sys.exit(next((c for c in codes if c not in (0, -signal.SIGTERM)), 0))


if __name__ == "__main__":
    main()
