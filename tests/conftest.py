"""Shared fixtures: real PostgreSQL (a fresh database per test session and xdist worker) and the
embedded SQLite default, an app per backend, a transaction rolled back after each test, and
logged-in clients for each role.

A service that does not answer fails the run; it is never turned into a skipped test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy.session import _app_ctx_id
from sqlalchemy.orm import scoped_session, sessionmaker

from config import Settings, load_settings

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
JWT_SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery staple"
ROLES = ("viewer", "user", "developer", "admin")


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


def make_settings(database_url: str, var_dir: Path, **extra: str) -> Settings:
    environ = {
        "REGISTRY_ENV": "production",
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        # The suite sends far more than 100 requests a minute per user; the rate-limit tests
        # build apps with it on.
        "RATE_LIMIT_ENABLED": "false",
        **extra,
    }
    return load_settings(environ=environ, overrides={"var_dir": str(var_dir)})


def fresh_pg_database(suffix: str) -> str:
    """Create an empty database named for this run (pid) and worker; returns its URL."""
    name = f"llmreg_test_{_worker()}_{os.getpid()}{suffix}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL does not answer at {PG_ADMIN_URL} ({exc}); run `make services`",
            pytrace=False,
        )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def committing_pg_app(suffix: str, var_dir: Path, username: str, role: str) -> Iterator[Flask]:
    """An app on a PostgreSQL database of its own where every transaction really commits (the
    ``app`` fixture's session rolls back and hides connections), migrated, with one user of
    ``role``; the database is dropped after."""
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.users.service import create_user

    url = fresh_pg_database(suffix)
    flask_app = create_app(make_settings(url, var_dir))
    with flask_app.app_context():
        upgrade()
        create_user(username, PASSWORD, [role])
    try:
        yield flask_app
    finally:
        with flask_app.app_context():
            db.engine.dispose()
        drop_pg_database(url)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at production cost takes ~0.4 s a hash; tests check behaviour, not cost."""
    from argon2 import PasswordHasher

    from app.users import service

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(service, "_hasher", cheap)
    monkeypatch.setattr(service, "_DUMMY_HASH", cheap.hash("not-a-real-password"))


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this session (and xdist worker), dropped after."""
    url = fresh_pg_database("")
    yield url
    drop_pg_database(url)


def _migrated_app(settings: Settings) -> Flask:
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db

    app = create_app(settings)
    with app.app_context():
        upgrade()

    @app.teardown_request
    def _end_session(_exc: BaseException | None) -> None:
        # The test client's requests run inside the test's app context; end the session with
        # each request, as production does, so no identity map outlives its request.
        db.session.remove()

    return app


@pytest.fixture(scope="session")
def pg_app(pg_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return _migrated_app(make_settings(pg_database_url, tmp_path_factory.mktemp("pg-var")))


@pytest.fixture(scope="session")
def sqlite_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    var = tmp_path_factory.mktemp("sqlite-var")
    return _migrated_app(make_settings(f"sqlite:///{var / 'registry.db'}", var))


@pytest.fixture(params=["pg", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(backend: str, request: pytest.FixtureRequest) -> Iterator[Flask]:
    """The app of ``backend`` inside a transaction that is rolled back after the test.

    Services commit as usual; with ``join_transaction_mode="create_savepoint"`` their commits
    release savepoints of the outer transaction instead.
    """
    from app.extensions import db

    flask_app: Flask = request.getfixturevalue(f"{backend}_app")
    with flask_app.app_context():
        connection = db.engine.connect()
        outer = connection.begin()
        original = db.session
        # A plain Session: Flask-SQLAlchemy's own would pick the engine over this connection.
        db.session = scoped_session(  # type: ignore[misc]
            sessionmaker(
                bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
            ),
            scopefunc=_app_ctx_id,
        )
        try:
            yield flask_app
        finally:
            db.session.remove()
            db.session = original  # type: ignore[misc]
            outer.rollback()
            connection.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Api:
    """A test client logged in as one user: ``api.get(path)`` etc. with its bearer token."""

    def __init__(self, client: FlaskClient, token: str, user: dict[str, Any]) -> None:
        self.client = client
        self.token = token
        self.user = user

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.client.patch(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(path, headers=self._headers(kw.pop("headers", None)), **kw)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> Api:
    response = client.post("/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return Api(client, body["access_token"], body["user"])


@pytest.fixture
def users(app: Flask) -> dict[str, str]:
    """One user per role; returns role -> user id."""
    from app.users.service import create_user

    with app.app_context():
        return {role: create_user(f"{role}-1", PASSWORD, [role]).id for role in ROLES}


@pytest.fixture
def as_role(client: FlaskClient, users: dict[str, str]) -> Any:
    """``as_role("developer")`` -> an Api logged in with that role."""
    cache: dict[str, Api] = {}

    def get(role: str) -> Api:
        if role not in cache:
            cache[role] = login(client, f"{role}-1")
        return cache[role]

    return get


@pytest.fixture
def admin(as_role: Any) -> Api:
    return as_role("admin")  # type: ignore[no-any-return]


@pytest.fixture
def dev(as_role: Any) -> Api:
    return as_role("developer")  # type: ignore[no-any-return]


@pytest.fixture
def viewer(as_role: Any) -> Api:
    return as_role("viewer")  # type: ignore[no-any-return]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible server on a free loopback port, spoken to over HTTP by boto3."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the moto server; returns its name."""
    import uuid

    import boto3

    name = f"registry-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
