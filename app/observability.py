"""Structured logs and per-request bookkeeping: request id, a trace span, one JSON line per
request."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from contextvars import Token
from typing import Any

from flask import Flask, Response, g, request
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from pythonjsonlogger.json import JsonFormatter

from app.context import (
    actor_var,
    current_trace_id,
    new_request_id,
    reads_only_var,
    request_id_var,
)
from app.errors import InvalidInputError

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
request_log = logging.getLogger("registry.request")
MAX_URL_LENGTH = 8192


class ContextFilter(logging.Filter):
    """Stamps every record with the request id and trace id of the current context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id()
        return True


def configure_logging(level: str) -> None:
    """One JSON object per line on stderr: timestamp, level, message, request_id, trace_id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}{trace_id}",
            style="{",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_registry", False):
            root.removeHandler(existing)
    handler._registry = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # An unknown name (LOG_LEVEL=verbose) must not crash start-up before the settings can say
    # what is wrong with it: INFO until then.
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


_tracing_ready = False


class RecordWhenProcessed(Sampler):
    """Spans are recorded (parent-based, always on) while the tracer provider has a span
    processor to hand them to (an exporter); without one a span keeps its trace and span ids
    (for logs, events and the traceparent passed on) but is not built, timed and dropped: that
    cost a cached read 4% of its time for nothing."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self._on = ParentBased(ALWAYS_ON)

    def _processed(self) -> bool:
        multi = getattr(self.provider, "_active_span_processor", None)
        processors = getattr(multi, "_span_processors", None)
        return processors is None or bool(processors)  # unknown SDK internals: record

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = self._on if self._processed() else ALWAYS_OFF
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "RecordWhenProcessed"


def init_tracing(otlp_endpoint: str | None = None, service_name: str = "llm-registry") -> None:
    """The OpenTelemetry SDK's tracer provider, once per process, so that every request and
    task has a trace id (for logs and events) and a caller's ``traceparent`` is continued.
    Spans go to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP over HTTP) when it is set, and then Redis
    calls and SQL statements are traced too (``trace_redis``; ``create_app`` calls
    ``trace_engine``): without an exporter their spans would only cost time, a tenth of a
    cached read and more of a worker's job."""
    global _tracing_ready
    if _tracing_ready:
        return
    from opentelemetry.sdk.resources import Resource

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        sampler = RecordWhenProcessed()
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), sampler=sampler
        )
        sampler.provider = provider
        trace.set_tracer_provider(provider)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        trace_redis()
    _tracing_ready = True


def trace_redis() -> None:
    """Spans for every Redis command of this process (once)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def trace_engine(engine: Any) -> None:
    """SQL spans for ``engine`` (once per engine)."""
    if getattr(engine, "_registry_traced", False):
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine, enable_commenter=False)
    engine._registry_traced = True


tracer = trace.get_tracer("llm-registry")


class _RequestState:
    """What the request hooks keep between them: one object on ``g`` instead of six keys."""

    __slots__ = ("reads_only_token", "request_id_token", "span", "started", "trace_token")

    def __init__(
        self,
        span: Span,
        trace_token: Token[Context],
        request_id_token: Token[str | None],
        reads_only_token: Token[bool],
    ) -> None:
        self.span = span
        self.trace_token = trace_token
        self.request_id_token = request_id_token
        self.reads_only_token = reads_only_token
        self.started = time.perf_counter()


# Read when OpenTelemetry made its propagators (at import), as OpenTelemetry does.
_PROPAGATORS_CHOSEN = "OTEL_PROPAGATORS" in os.environ


@functools.lru_cache(maxsize=4)
def _environ_keys(textmap: Any) -> tuple[str, ...]:
    """The WSGI environ keys of the headers ``textmap`` reads: worked out once per propagator
    rather than at every request."""
    return tuple("HTTP_" + name.upper().replace("-", "_") for name in textmap.fields)


def _carries_trace_context(environ: dict[str, Any]) -> bool:
    """Whether the request has a header the default propagators read (``traceparent``,
    ``tracestate``, ``baggage``): extracting from none gives an empty context, and costs a
    cached read ~3% to find that out. With ``OTEL_PROPAGATORS`` set, always extract: some
    propagators read headers their ``fields`` do not name (Jaeger's ``uberctx-*``)."""
    if _PROPAGATORS_CHOSEN:
        return True
    return any(key in environ for key in _environ_keys(propagate.get_global_textmap()))


# Sent on every answer unless a view set its own.
_ALWAYS_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def install_request_hooks(app: Flask) -> None:
    init_tracing(app.extensions["registry_settings"].otel_exporter_otlp_endpoint)
    # The provider's own tracer, not the module's proxy (made before any provider was set),
    # which would look the provider up again for every span.
    server_tracer = trace.get_tracer("llm-registry")

    @app.before_request
    def _start() -> None:
        # One hook rather than one per concern: Flask's dispatch of each costs every request.
        req = request._get_current_object()  # type: ignore[attr-defined]
        environ = req.environ
        headers = req.headers
        incoming = headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else new_request_id()
        ctx = g._get_current_object()
        ctx.request_id = request_id
        parent = propagate.extract(headers) if _carries_trace_context(environ) else Context()
        rule = req.url_rule
        span = server_tracer.start_span(
            f"{req.method} {rule.rule if rule else 'unmatched'}",
            context=parent,
            kind=SpanKind.SERVER,
        )
        # ``g`` belongs to the app context, which outlives one request when a caller (a test, a
        # CLI) pushed it: the caller's identity must never carry over to the next request.
        ctx.pop("identity", None)
        ctx.request_state = _RequestState(
            span,
            otel_context.attach(trace.set_span_in_context(span, parent)),
            request_id_var.set(request_id),
            # GET and HEAD change nothing: their reads run in autocommit (app.db.RegistrySession).
            reads_only_var.set(req.method in ("GET", "HEAD")),
        )
        raw = environ.get("RAW_URI") or req.full_path
        if len(raw) > MAX_URL_LENGTH:
            raise InvalidInputError(f"the URL is longer than {MAX_URL_LENGTH} characters")
        # PostgreSQL cannot store or even compare text holding NUL, SQLite can: reject it up
        # front so that both backends answer alike, and never with a 500.
        if "\x00" in req.path or (
            environ.get("QUERY_STRING")
            and any("\x00" in key or "\x00" in value for key, value in req.args.items(multi=True))
        ):
            raise InvalidInputError("the URL must not contain NUL characters")

    @app.after_request
    def _finish(response: Response) -> Response:
        ctx = g._get_current_object()
        request_id = ctx.get("request_id") or new_request_id()
        headers = response.headers
        status = response.status_code
        # One pass over the headers there are, rather than one or two per header added.
        present = {name.lower() for name, _value in headers}
        if "x-request-id" in present:
            headers["X-Request-ID"] = request_id
        else:
            headers.add("X-Request-ID", request_id)
        if status not in (429, 503) and "retry-after" in present:
            del headers["Retry-After"]  # the limiter adds it to every answer
        for name, value in _ALWAYS_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
        req = request._get_current_object()  # type: ignore[attr-defined]
        if req.is_secure:  # TLS here or, with TRUSTED_PROXIES, at the proxy
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        state: _RequestState | None = ctx.get("request_state")
        if state is not None and state.span.is_recording():
            state.span.set_attribute("http.request.method", req.method)
            state.span.set_attribute("http.response.status_code", status)
            if status >= 500:
                state.span.set_status(Status(StatusCode.ERROR))
        if not request_log.isEnabledFor(logging.INFO):
            return response  # LOG_LEVEL above INFO: no access log, so no fields to gather
        identity = ctx.get("identity")
        request_log.info(
            "%s %s %s",
            req.method,
            req.path,
            status,
            extra={
                "request_id": request_id,
                "method": req.method,
                "route": req.url_rule.rule if req.url_rule else "unmatched",
                "status": status,
                "duration_ms": round((time.perf_counter() - state.started) * 1000, 2)
                if state is not None
                else None,
                "user": identity.username if identity else None,
                "remote_addr": req.remote_addr,
            },
        )
        return response

    @app.teardown_request
    def _reset(exc: BaseException | None) -> None:
        ctx = g._get_current_object()
        state: _RequestState | None = ctx.pop("request_state", None)
        if state is not None:
            if exc is not None:
                state.span.set_status(Status(StatusCode.ERROR, exc.__class__.__name__))
            state.span.end()
            otel_context.detach(state.trace_token)
            reads_only_var.reset(state.reads_only_token)
            request_id_var.reset(state.request_id_token)
        ctx.pop("identity", None)
        actor_var.set(None)


CORS_EXPOSED = (
    "ETag",
    "Location",
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
)
CORS_ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Range",
    "X-API-Key",
    "X-Checksum-SHA256",
    "X-Request-ID",
    "X-Signature",
    "X-Signature-Timestamp",
    "traceparent",
)


def init_cors(app: Flask, settings: Any) -> None:
    """CORS for the origins in ``CORS_ALLOWED_ORIGINS`` (``*`` for any); none by default."""
    origins = list(settings.cors_allowed_origins)
    if not origins:
        return
    from flask_cors import CORS

    CORS(
        app,
        resources={r"/v1/*": {}, r"/openapi.json": {}, r"/health*": {}, r"/version": {}},
        origins="*" if "*" in origins else origins,
        expose_headers=list(CORS_EXPOSED),
        allow_headers=list(CORS_ALLOWED_HEADERS),
        methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
        max_age=600,
        supports_credentials=False,
        vary_header=True,
    )
