"""Declarative base, column types and session helpers shared by every domain's models."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any

from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import JSON, DateTime, Dialect, Engine, Insert, MetaData, Table, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session
from sqlalchemy.types import TypeDecorator
from ulid import ULID

from app.context import reads_only_var

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        # SQLite compares the stored text: keep one fixed format without an offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# A plain Session or Flask-SQLAlchemy's scoped ``db.session``: services accept either.
DbSession = Session | scoped_session[Any]

JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONType}


def new_id() -> str:
    """A new ULID: sortable by creation time, 26 characters."""
    return str(ULID())


def utcnow() -> dt.datetime:
    # Microsecond precision is what both PostgreSQL and SQLite keep.
    return dt.datetime.now(dt.UTC)


# A pooled connection that sat unused this long is pinged before it is handed out again.
IDLE_PING_SECONDS = 1.0


def install_idle_ping(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it sat idle for ``IDLE_PING_SECONDS``.

    What ``pool_pre_ping`` is for (connections the server, a restart or a proxy's idle timeout
    closed while they sat in the pool) happens to idle connections; ``pool_pre_ping`` pings at
    every checkout, a round trip per request and several per job under load. A dead connection
    found here makes the pool replace it and every connection older than it, as
    ``pool_pre_ping`` does. The trade-off: a connection that was in use within the second when
    the server went away fails the statement it is given next (a 503); SQLAlchemy then
    invalidates the pool, so a restart under load costs each busy process about one request."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # new, or back in use within the second
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa_exc.InvalidatePoolError(str(exc)) from exc
            raise


def install_autocommit_reads(engine: Engine) -> None:
    """Give a PostgreSQL ``engine`` the autocommit view ``RegistrySession`` reads through (one
    per engine, sharing its pool, made once: the session keys its connections by bind)."""
    if engine.dialect.name == "postgresql":
        engine._registry_reads = engine.execution_options(  # type: ignore[attr-defined]
            isolation_level="AUTOCOMMIT"
        )


class RegistrySession(FlaskSession):
    """Flask-SQLAlchemy's session; while a GET or HEAD request runs (``reads_only_var``),
    PostgreSQL is read in autocommit: no BEGIN before the first statement and no ROLLBACK at
    the end, two round trips of a read's three to five. Only on a database whose default
    isolation is READ COMMITTED, where every statement of a transaction takes its own snapshot
    anyway, so a read sees the same rows either way.

    Such requests change no state of the registry. The writes they may make are each one
    statement, and must stay so (each commits on its own here): an API key's ``last_used_at``
    (app/auth/apikeys.py), a signed request's nonce (``RevocationStore.claim``) and the fold of
    count deltas that a list total or a scrape reads (``fold_deltas``)."""

    def get_bind(
        self,
        mapper: Any | None = None,
        clause: Any | None = None,
        bind: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        engine = super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)
        if bind is None and reads_only_var.get():
            reads = getattr(engine, "_registry_reads", None)
            # Known once the engine has connected (before that: a transaction, as before).
            isolation = getattr(engine.dialect, "default_isolation_level", None)
            if reads is not None and isolation == "READ COMMITTED":
                return reads
        return engine


def install_sqlite_pragmas(engine: Engine) -> None:
    """WAL for concurrent readers, enforced foreign keys, waiting instead of failing on locks."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, issue BEGIN so that transactions behave as on PostgreSQL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def insert_ignoring_conflicts(
    session: DbSession, model: Any, index: list[str], **values: Any
) -> None:
    """INSERT ... ON CONFLICT (index) DO NOTHING, on PostgreSQL and SQLite alike: of concurrent
    inserts of one key exactly one lands and none fails."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing(index_elements=index))


def insert_new(session: DbSession, objects: list[Any]) -> None:
    """INSERT the rows of ``objects`` (new ORM objects of one class, never added to the session)
    in one Core statement: what was set on them, the columns' defaults for the rest. The
    objects stay outside the session (the caller owns them, e.g. to show them in a response);
    no unit of work, a third of the time of ``session.add`` and a flush for a registration's
    rows. The order of calls is the order of the rows' inserts (parents first)."""
    if not objects:
        return
    table = objects[0].__table__
    rows = [{k: v for k, v in vars(obj).items() if k in table.c} for obj in objects]
    # On the session's connection, with the table's one INSERT: a Core statement needs none of
    # the session's ORM execution (45 us less per insert).
    connection = session.connection()
    statement = _INSERTS.get(table)
    if statement is None:
        statement = _INSERTS.setdefault(table, table.insert())
    # One statement per run of rows that set the same columns (an executemany binds the
    # columns of its first row).
    for _columns, run in itertools.groupby(rows, key=lambda row: sorted(row)):
        connection.execute(statement, list(run))


_INSERTS: dict[Table, Insert] = {}  # table -> its INSERT
