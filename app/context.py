"""Per-request (or per-task) context that services and log lines read without touching Flask:
the request id and the acting user. Set by the HTTP hooks and by the Celery task wrapper."""

from __future__ import annotations

import random
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("actor", default=None)
# True while a request that changes nothing (GET, HEAD) runs: its reads go in autocommit
# (app.db.RegistrySession).
reads_only_var: ContextVar[bool] = ContextVar("reads_only", default=False)


def new_request_id() -> str:
    """A random (version 4) UUID for a request that brought no ``X-Request-ID``: an id to find
    the request by, not a secret, so from ``random`` (reseeded in every forked process) rather
    than ``uuid.uuid4``, whose read of the OS's random source cost twice as much."""
    value = (
        random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)
        | (0x4000 << 64)
        | (0x8000 << 48)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def current_trace_id() -> str | None:
    """The active OpenTelemetry trace id as 32 hex characters, or None outside a trace."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry is a hard dependency
        return None
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.trace_id else None


def current_span_id() -> str | None:
    """The active OpenTelemetry span id as 16 hex characters, or None outside a trace."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.span_id:016x}" if context.span_id else None
