"""The outbox (CONTRACT.md §7): writing events inside the caller's transaction, giving them
their place in the feed at commit, and reading them back as CloudEvents.

Ordering. An event's ``seq`` is taken when its transaction commits, under a lock that event
writers take one at a time (a transaction-scoped advisory lock on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already lets one writer in at a time). The lock is released only after the
commit is visible, so ``seq`` order is commit order: a reader that has seen event *n* has seen
every event before it, and the relay and ``GET /v1/events?after=`` never skip one. Everything
else the transaction writes is flushed before the lock is taken, so the lock is held for two
short statements and cannot deadlock with row locks.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import Table, bindparam, event, func, select, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from app.context import actor_var, current_span_id, current_trace_id, request_id_var
from app.db import DbSession, utcnow
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
    """Add one event row to ``session`` (no commit: it lands with the change it describes, and
    gets its place in the feed when that transaction commits).

    Actor, request id and trace id are taken from the current request or task context.
    Raises ``ValueError`` for a type that CONTRACT.md §7 does not list.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    row = Event(
        type=event_type,
        asset_id=asset_id,
        data=data,
        actor=actor_var.get(),
        request_id=request_id_var.get(),
        trace_id=current_trace_id(),
        span_id=current_span_id(),
    )
    session.add(row)
    session.info.setdefault(_PENDING, []).append(row)
    return row


@event.listens_for(Session, "before_commit")
def _sequence_pending_events(session: Session) -> None:
    pending: list[Event] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    session.flush()  # the rest of the transaction first: under the lock only events are touched
    # An event added inside a savepoint that rolled back is gone with it.
    rows = [row for row in pending if sa_inspect(row).persistent]
    if rows:
        assign_sequence(session, rows)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending_events(session: Session, previous_transaction: SessionTransaction) -> None:
    # Only when the whole transaction rolls back: a savepoint's rollback keeps the events
    # recorded before it (its own are filtered out at commit, no longer persistent).
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)


def assign_sequence(session: Session, rows: Sequence[Event]) -> None:
    """Give ``rows`` (flushed, in this order) the next feed positions; called just before the
    commit, holding the event commit lock until the transaction ends."""
    connection = session.connection()
    table = Event.__table__
    assert isinstance(table, Table)
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_COMMIT_LOCK})
        if len(rows) == 1:  # the common case: one statement under the lock
            number = connection.execute(
                update(table)
                .where(table.c.id == rows[0].id)
                .values(seq=func.nextval("events_seq"))
                .returning(table.c.seq)
            ).scalar_one()
            set_committed_value(rows[0], "seq", number)
            return
        numbers = sorted(
            connection.execute(
                text("SELECT nextval('events_seq') FROM generate_series(1, :n)"),
                {"n": len(rows)},
            ).scalars()
        )
    else:  # SQLite: this transaction already holds the database's only write lock
        start = connection.execute(select(func.max(Event.seq))).scalar_one() or 0
        numbers = list(range(start + 1, start + 1 + len(rows)))
    connection.execute(
        update(table).where(table.c.id == bindparam("event_id")).values(seq=bindparam("number")),
        [{"event_id": row.id, "number": n} for row, n in zip(rows, numbers, strict=True)],
    )
    for row, n in zip(rows, numbers, strict=True):
        set_committed_value(row, "seq", n)


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
