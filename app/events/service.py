"""Writing events into the outbox, inside the caller's transaction."""

from __future__ import annotations

from typing import Any

from app.context import actor_var, current_trace_id, request_id_var
from app.db import DbSession
from app.events.models import EVENT_TYPES, Event


def record_event(
    session: DbSession, event_type: str, asset_id: str | None, data: dict[str, Any]
) -> Event:
    """Add one event row to ``session`` (no commit: it lands with the change it describes).

    Actor, request id and trace id are taken from the current request or task context.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event = Event(
        type=event_type,
        asset_id=asset_id,
        data=data,
        actor=actor_var.get(),
        request_id=request_id_var.get(),
        trace_id=current_trace_id(),
    )
    session.add(event)
    return event
