"""Spans are recorded only while something takes them (app/observability.py): without a span
processor a span still carries ids for logs, events and the traceparent passed on."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from app.observability import RecordWhenProcessed

REMOTE = SpanContext(
    trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
    span_id=0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


def _provider() -> TracerProvider:
    sampler = RecordWhenProcessed()
    provider = TracerProvider(sampler=sampler)
    sampler.provider = provider
    return provider


def test_without_a_processor_spans_have_ids_but_are_not_recorded() -> None:
    tracer = _provider().get_tracer("test")

    with tracer.start_as_current_span("request") as span:
        own = span.get_span_context()
    child = tracer.start_span("task", context=set_span_in_context(NonRecordingSpan(REMOTE)))

    assert not span.is_recording()
    assert own.trace_id != 0 and own.span_id != 0
    assert not child.is_recording()
    assert child.get_span_context().trace_id == REMOTE.trace_id  # the caller's trace goes on
    assert child.get_span_context().span_id not in (0, REMOTE.span_id)


def test_once_a_processor_takes_spans_they_are_recorded_and_handed_over() -> None:
    provider = _provider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("request", attributes={"k": "v"}) as span:
        assert span.is_recording()
    child = tracer.start_span("task", context=set_span_in_context(NonRecordingSpan(REMOTE)))
    child.end()

    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ["request", "task"]
    assert finished[0].attributes == {"k": "v"}
    assert finished[1].context.trace_id == REMOTE.trace_id
    assert finished[1].parent is not None and finished[1].parent.span_id == REMOTE.span_id
