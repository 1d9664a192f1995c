"""Structured logs and per-request bookkeeping: request id, a trace span, one JSON line per
request."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Sequence
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
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from pythonjsonlogger.json import JsonFormatter

from app.context import actor_var, current_trace_id, reads_only_var, request_id_var
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


def install_request_hooks(app: Flask) -> None:
    init_tracing(app.extensions["registry_settings"].otel_exporter_otlp_endpoint)

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        parent = propagate.extract(request.headers)
        route = request.url_rule.rule if request.url_rule else "unmatched"
        span = tracer.start_span(f"{request.method} {route}", context=parent, kind=SpanKind.SERVER)
        g.otel_span = span
        g.otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        g.request_started = time.perf_counter()
        g.request_id_token = request_id_var.set(g.request_id)
        # ``g`` belongs to the app context, which outlives one request when a caller (a test, a
        # CLI) pushed it: the caller's identity must never carry over to the next request.
        g.pop("identity", None)
        # GET and HEAD change nothing: their reads run in autocommit (app.db.RegistrySession).
        g.reads_only_token = reads_only_var.set(request.method in ("GET", "HEAD"))

    @app.before_request
    def _reject_long_urls() -> None:
        raw = request.environ.get("RAW_URI") or request.full_path
        if len(raw) > MAX_URL_LENGTH:
            raise InvalidInputError(f"the URL is longer than {MAX_URL_LENGTH} characters")

    @app.before_request
    def _reject_nul_bytes() -> None:
        # PostgreSQL cannot store or even compare text holding NUL, SQLite can: reject it up
        # front so that both backends answer alike, and never with a 500.
        if "\x00" in request.path or any(
            "\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)
        ):
            raise InvalidInputError("the URL must not contain NUL characters")

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or str(uuid.uuid4())
        response.headers["X-Request-ID"] = request_id
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)  # the limiter adds it to every answer
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.is_secure:  # TLS here or, with TRUSTED_PROXIES, at the proxy
            response.headers.setdefault(
                "Strict-Transport-Security", "max-age=31536000; includeSubDomains"
            )
        span = g.get("otel_span")
        if span is not None:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
        if not request_log.isEnabledFor(logging.INFO):
            return response  # LOG_LEVEL above INFO: no access log, so no fields to gather
        started = g.get("request_started")
        identity = g.get("identity")
        request_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": request_id,
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else "unmatched",
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2)
                if started
                else None,
                "user": identity.username if identity else None,
                "remote_addr": request.remote_addr,
            },
        )
        return response

    @app.teardown_request
    def _reset(exc: BaseException | None) -> None:
        span = g.pop("otel_span", None)
        if span is not None:
            if exc is not None:
                span.set_status(Status(StatusCode.ERROR, exc.__class__.__name__))
            span.end()
        token = g.pop("otel_token", None)
        if token is not None:
            otel_context.detach(token)
        g.pop("identity", None)
        token = g.pop("reads_only_token", None)
        if token is not None:
            reads_only_var.reset(token)
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)
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
