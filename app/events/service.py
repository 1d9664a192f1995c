"""The outbox (CONTRACT.md §7): writing events inside the caller's transaction, giving them
their place in the feed at commit, and reading them back as CloudEvents.

Ordering. An event's ``seq`` is taken when its transaction commits, under a lock that event
writers take one at a time (a transaction-scoped advisory lock on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already lets one writer in at a time). The lock is released only after the
commit is visible, so ``seq`` order is commit order: a reader that has seen event *n* has seen
every event before it, and the relay and ``GET /v1/events?after=`` never skip one. Events are
inserted at that point, numbered, by one statement (not through the unit of work) that takes
the lock, after everything else the transaction writes has been flushed: the lock is held for
that statement and the commit, and cannot deadlock with row locks.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import Table, event, func, select, update
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from app.context import actor_var, current_span_id, current_trace_id, request_id_var
from app.db import DbSession, new_id, utcnow
from app.errors import ValidationFailedError
from app.events.models import EVENT_TYPES, Event, RelayState

SOURCE = "/llm-registry"
STREAM = "REGISTRY_EVENTS"
SUBJECT_PREFIX = "registry.events"
# pg_advisory_xact_lock key serialising event commits ("LLMREVNT" as a 63-bit integer).
EVENT_COMMIT_LOCK = 0x4C4C4D5245564E54
_PENDING = "registry_pending_events"
_FORMAT = JSONFormat()


def record_event(
    session: DbSession, event_type: str, asset_id: str | None, data: dict[str, Any]
) -> Event:
    """Record one event in ``session``'s transaction (no commit: it lands with the change it
    describes, and gets its place in the feed when that transaction commits).

    The row is not added to the session: it is inserted when the transaction commits, already
    numbered, by one statement under the event lock (see ``_insert_pending_events`` and
    ``insert_numbered``). An event recorded inside a savepoint that rolls back is dropped with
    it.

    Actor, request id and trace id are taken from the current request or task context.
    Raises ``ValueError`` for a type that CONTRACT.md §7 does not list.
    """
    row = new_event(event_type, asset_id, data)
    own = session() if isinstance(session, scoped_session) else session
    # The innermost transaction it was recorded in, so that a savepoint's rollback drops
    # exactly its own events (begun here if nothing ran yet: a rollback then drops it too).
    recorded_in = own.get_nested_transaction() or own.get_transaction() or own.begin()
    own.info.setdefault(_PENDING, []).append((row, recorded_in))
    return row


def new_event(event_type: str, asset_id: str | None, data: dict[str, Any]) -> Event:
    """The outbox row of one event, not yet numbered nor recorded anywhere: ``record_event``
    records it, ``NUMBERED_INSERT`` inserts it. Actor, request id and trace id come from the
    current request or task context; ``ValueError`` for a type CONTRACT.md §7 does not list."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    return Event(
        id=new_id(),
        seq=None,
        type=event_type,
        asset_id=asset_id,
        data=data,
        actor=actor_var.get(),
        request_id=request_id_var.get(),
        trace_id=current_trace_id(),
        span_id=current_span_id(),
        created_at=utcnow(),
        published_at=None,
    )


# Events numbered and inserted on PostgreSQL, as WITH queries of one statement: take the event
# lock, take one number per event under it (in the rows' order: a volatile select list is
# computed after the sort), insert the rows bound by ``numbered_insert_params``. ``source`` is
# a FROM item that gates it: with no row, nothing is numbered or inserted. As in
# ``insert_numbered``, the lock is held until the transaction ends, so the statement should be
# its last but the commit; PostgreSQL runs WITH queries in an order of its own, so whatever
# else the statement writes (its triggers and foreign-key checks too) may run under the lock.
NUMBERED_INSERT = """event_lock AS MATERIALIZED (
  SELECT pg_advisory_xact_lock(%(event_lock)s::bigint)
), event_numbers AS MATERIALIZED (
  SELECT n, nextval('events_seq') AS seq
  FROM event_lock, {source}, generate_series(1, %(event_count)s::int) AS n
  ORDER BY n
), numbered_events AS (
  INSERT INTO events (
    id, seq, type, asset_id, data, actor, request_id, trace_id, span_id, created_at)
  SELECT
    e.id, event_numbers.seq, e.type, e.asset_id, e.data, e.actor, e.request_id, e.trace_id,
    e.span_id, e.created_at
  FROM unnest(
    %(event_ids)s::varchar[], %(event_types)s::varchar[], %(event_asset_ids)s::varchar[],
    %(event_datas)s::jsonb[], %(event_actors)s::varchar[], %(event_request_ids)s::varchar[],
    %(event_trace_ids)s::varchar[], %(event_span_ids)s::varchar[],
    %(event_created_ats)s::timestamptz[]
  ) WITH ORDINALITY AS e(
    id, type, asset_id, data, actor, request_id, trace_id, span_id, created_at, n)
  JOIN event_numbers USING (n)
  RETURNING id, seq
)"""


def numbered_insert_params(rows: Sequence[Event]) -> dict[str, Any]:
    """The parameters of ``NUMBERED_INSERT`` for ``rows`` (from ``new_event``), in order."""
    return {
        "event_lock": EVENT_COMMIT_LOCK,
        "event_count": len(rows),
        "event_ids": [row.id for row in rows],
        "event_types": [row.type for row in rows],
        "event_asset_ids": [row.asset_id for row in rows],
        "event_datas": [json.dumps(row.data) for row in rows],
        "event_actors": [row.actor for row in rows],
        "event_request_ids": [row.request_id for row in rows],
        "event_trace_ids": [row.trace_id for row in rows],
        "event_span_ids": [row.span_id for row in rows],
        "event_created_ats": [row.created_at for row in rows],
    }


@event.listens_for(Session, "before_commit")
def _insert_pending_events(session: Session) -> None:
    pending: list[tuple[Event, SessionTransaction]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    session.flush()  # the rest of the transaction first: under the lock only events are touched
    insert_numbered(session, [row for row, _ in pending])


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending_events(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.parent is None:  # the whole transaction
        session.info.pop(_PENDING, None)
        return
    # A savepoint: the events recorded inside it (or inside savepoints within it) go with it.
    pending = session.info.get(_PENDING)
    if pending:
        pending[:] = [
            (row, recorded_in)
            for row, recorded_in in pending
            if not _within(recorded_in, previous_transaction)
        ]


def _within(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False


def insert_numbered(session: Session, rows: Sequence[Event]) -> None:
    """INSERT ``rows`` with the next feed positions, in this order; called just before the
    commit, holding the event commit lock until the transaction ends."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # One statement: the lock, the numbers (taken under it, in the rows' order) and the rows.
        numbered = connection.exec_driver_sql(_INSERT_NUMBERED, numbered_insert_params(rows))
        seqs = dict(numbered.tuples().all())
        for row in rows:
            row.seq = seqs[row.id]
        return
    # SQLite: this transaction already holds the database's only write lock.
    table = Event.__table__
    assert isinstance(table, Table)
    values = [{c.key: getattr(row, c.key) for c in table.columns} for row in rows]
    start = connection.execute(select(func.max(Event.seq))).scalar_one() or 0
    for n, (row, row_values) in enumerate(zip(rows, values, strict=True), start=start + 1):
        row.seq = row_values["seq"] = n
    connection.execute(table.insert(), values)


_ALWAYS = NUMBERED_INSERT.format(source="(VALUES (1)) AS always (one)")
# Constant SQL, every value bound:
_INSERT_NUMBERED = "WITH " + _ALWAYS + " SELECT id, seq FROM numbered_events"  # noqa: S608


# ---- reading -----------------------------------------------------------------------------


def to_cloudevent(row: Event) -> CloudEvent:
    """The CloudEvents 1.0 form of an outbox row: ``type`` is the bare event type, ``subject``
    the asset id; ``sequence`` (zero-padded, so it also sorts as text), ``actor``,
    ``requestid`` and ``traceid`` are extension attributes."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": row.id,
        "source": SOURCE,
        "type": row.type,
        "time": row.created_at,
        "datacontenttype": "application/json",
    }
    if row.asset_id:
        attributes["subject"] = row.asset_id
    if row.seq is not None:
        attributes["sequence"] = f"{row.seq:020d}"
    for name, value in (
        ("actor", row.actor),
        ("requestid", row.request_id),
        ("traceid", row.trace_id),
        ("traceparent", traceparent_of(row)),
    ):
        if value:
            attributes[name] = value
    return CloudEvent(attributes, row.data)


def traceparent_of(row: Event) -> str | None:
    """W3C ``traceparent`` of the span that made the change (CloudEvents' distributed tracing
    extension), so a consumer can continue that trace."""
    if row.trace_id and row.span_id:
        return f"00-{row.trace_id}-{row.span_id}-01"
    return None


def cloudevent_bytes(row: Event) -> bytes:
    """The structured-mode JSON (``application/cloudevents+json``) the relay publishes."""
    return _FORMAT.write(to_cloudevent(row))


def cloudevent_document(row: Event) -> dict[str, Any]:
    """The same CloudEvent as a JSON object, as ``GET /v1/events`` serves it."""
    document: dict[str, Any] = json.loads(cloudevent_bytes(row))
    return document


def subject_for(row: Event) -> str:
    """``registry.events.<type>.<asset_id>``, ``_`` in place of a missing asset id."""
    return f"{SUBJECT_PREFIX}.{row.type}.{row.asset_id or '_'}"


def list_events(
    session: DbSession,
    *,
    after: str | None = None,
    event_type: str | None = None,
    asset_id: str | None = None,
    limit: int = 50,
) -> tuple[list[Event], int, str | None]:
    """Committed events oldest first, after the event with id ``after``: (page, total matching
    the filters, next cursor). The cursor is the page's last event id while more events follow,
    else None; a polling client goes on from the last id it saw.

    Raises ``ValidationFailedError`` when ``after`` names no event.
    """
    query = select(Event).where(Event.seq.is_not(None))
    if event_type is not None:
        query = query.where(Event.type == event_type)
    if asset_id is not None:
        query = query.where(Event.asset_id == asset_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if after is not None:
        after_seq = session.scalar(select(Event.seq).where(Event.id == after))
        if after_seq is None:
            raise ValidationFailedError({"after": ["No event has this id."]})
        query = query.where(Event.seq > after_seq)
    rows = list(session.scalars(query.order_by(Event.seq).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, total, rows[-1].id if more and rows else None


# ---- the relay's side ----------------------------------------------------------------------


def pending_events(session: DbSession, limit: int) -> list[Event]:
    """The oldest committed events not yet published, in feed order."""
    return list(
        session.scalars(
            select(Event)
            .where(Event.published_at.is_(None), Event.seq.is_not(None))
            .order_by(Event.seq)
            .limit(limit)
        )
    )


def mark_published(session: DbSession, rows: Sequence[Event]) -> int:
    """Mark ``rows`` published (after JetStream acknowledged them) and count them into
    ``events_published_total``; commits. Returns how many were newly marked: a row that another
    relay marked first is not counted twice."""
    if not rows:
        return 0
    now = utcnow()
    result = session.execute(
        update(Event)
        .where(Event.id.in_([row.id for row in rows]), Event.published_at.is_(None))
        .values(published_at=now)
        .execution_options(synchronize_session=False)
    )
    marked = int(getattr(result, "rowcount", 0) or 0)
    last_seq = max(row.seq or 0 for row in rows)
    session.execute(
        update(RelayState)
        .where(RelayState.id == 1)
        .values(
            published_total=RelayState.published_total + marked,
            last_published_seq=func.coalesce(
                func.greatest(RelayState.last_published_seq, last_seq)
                if session.get_bind().dialect.name == "postgresql"
                else func.max(func.coalesce(RelayState.last_published_seq, 0), last_seq),
                last_seq,
            ),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return marked


def outbox_backlog(session: DbSession) -> tuple[int, dt.datetime | None]:
    """(events waiting to be published, creation time of the oldest of them)."""
    count, oldest = session.execute(
        select(func.count(), func.min(Event.created_at)).where(
            Event.published_at.is_(None), Event.seq.is_not(None)
        )
    ).one()
    return int(count), oldest


def published_total(session: DbSession) -> int:
    """How many events the relays have published since the registry began."""
    return int(session.scalar(select(RelayState.published_total).where(RelayState.id == 1)) or 0)
