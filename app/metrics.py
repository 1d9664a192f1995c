"""``GET /metrics`` (Prometheus text) with the names of CONTRACT.md §8.

Process metrics (requests, durations, queries, cache operations, job steps) are counted where they
happen. Under gunicorn and Celery several processes count: ``llm-registry serve`` and ``worker``
set ``PROMETHEUS_MULTIPROC_DIR`` and every scrape sums the processes' files. Counts that live in
the database (assets, jobs, outbox) and the broker's queue lengths are read at scrape time, so
every API replica reports the same truth; assets and jobs come from a counts table kept by
database triggers, so a scrape never scans those tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, Request, Response, has_app_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_flask_exporter import NO_PREFIX, PrometheusMetrics
from sqlalchemy import Engine, event
from werkzeug.local import LocalProxy

from app.events.service import outbox_backlog, published_total
from app.extensions import db
from app.http import route_template

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered", ["method", "path", "status"])
DB_QUERIES = Counter("db_queries", "SQL statements sent to the database")
CACHE_OPERATIONS = Counter("cache_operations", "Cache reads and writes", ["operation", "result"])
JOB_DURATION = Histogram(
    "job_duration_seconds",
    "Time a job step took in a worker",
    ["kind", "step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


@event.listens_for(Engine, "before_cursor_execute")
def _count_query(*_: Any) -> None:
    DB_QUERIES.inc()


def path(req: Request) -> str:
    """The route as the OpenAPI document writes it (``/v1/assets/{asset_id}``), ``unmatched``
    when no route matched: never the raw URL, whose ids would explode the label set. (Named
    ``path`` because prometheus-flask-exporter names its label after this function.)"""
    if isinstance(req, LocalProxy):  # as prometheus-flask-exporter passes it
        req = req._get_current_object()
    rule = req.url_rule
    return route_template(rule.rule) if rule else "unmatched"


class DatabaseCollector(Collector):
    """``assets_total``, ``jobs_total``, ``outbox_pending``, ``events_published_total`` and
    ``celery_queue_length``, read when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def describe(self) -> Iterator[Metric]:  # registering must not query the database
        return iter(())

    def collect(self) -> Iterator[Metric]:
        try:
            if has_app_context():
                families = self._read()
            else:
                with self.app.app_context():
                    families = self._read()
        except Exception as exc:  # a scrape without these beats a failed scrape
            log.warning("metrics: could not read the database: %s", exc.__class__.__name__)
            return
        yield from families
        yield from self._queues()

    def _read(self) -> list[Metric]:
        from app.stats.service import read_status_counts

        session = db.session
        try:
            pending, _oldest = outbox_backlog(session)
            published = published_total(session)
            counts = read_status_counts(session)
            session.commit()
        except Exception:
            session.rollback()
            raise
        assets = GaugeMetricFamily(
            "assets_total", "Assets by type and status", labels=["asset_type", "status"]
        )
        jobs = GaugeMetricFamily("jobs_total", "Jobs by kind and status", labels=["kind", "status"])
        for (entity, kind, status), n in sorted(counts.items()):
            (assets if entity == "asset" else jobs).add_metric([kind, status], n)
        return [
            assets,
            jobs,
            GaugeMetricFamily(
                "outbox_pending", "Events waiting in the outbox to be published", value=pending
            ),
            CounterMetricFamily(
                "events_published", "Events published to NATS JetStream", value=published
            ),
        ]

    def _queues(self) -> Iterator[Metric]:
        from app.jobs.queue import queue_lengths

        settings = self.app.extensions["registry_settings"]
        try:
            lengths = queue_lengths(settings)
        except Exception as exc:
            log.warning("metrics: could not read the broker: %s", exc.__class__.__name__)
            return
        family = GaugeMetricFamily(
            "celery_queue_length", "Tasks waiting in a broker queue", labels=["queue"]
        )
        for queue, length in sorted(lengths.items()):
            family.add_metric([queue], length)
        yield family


class _ProcessMetrics(Collector):
    """This process's own metrics (when not in multiprocess mode): the module-level ones and
    this app's prometheus-flask-exporter ones."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            yield from registry.collect()


def _scrape_registry(app: Flask, exporter_registry: CollectorRegistry) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessMetrics(REGISTRY, exporter_registry))
    registry.register(DatabaseCollector(app))
    return registry


def init_metrics(app: Flask) -> None:
    """Count and time every request, and serve ``/metrics``.

    prometheus-flask-exporter times requests (``http_request_duration_seconds{method,path,
    status}``, plus its ``http_request_total`` and ``exporter_info``); the contract's
    ``http_requests_total{method,path,status}`` is counted here beside it. Each app gets its own
    exporter registry (the exporter installs its hooks only once per registry), which the scrape
    reads, or, under gunicorn and Celery, the multiprocess files do."""
    exporter_registry = CollectorRegistry(auto_describe=True)
    exporter = PrometheusMetrics(
        app,
        path=None,  # /metrics is served below, with the database's counts
        registry=exporter_registry,
        defaults_prefix=NO_PREFIX,
        group_by=path,
        buckets=LATENCY_BUCKETS,
        # No excluded_paths: it would match a pattern against every request's path. The
        # scrape's view says it is not tracked instead (do_not_track, below).
    )
    # The label children each (method, route, status) counts into: ``labels()`` validates and
    # looks its arguments up again at every call. Bounded by the app's routes x methods x codes.
    counted: dict[tuple[str, str | None, int], Any] = {}

    @app.after_request
    def _count(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        if req.path == "/metrics":
            return response  # scrapes are not requests to count
        rule = req.url_rule
        key = (req.method, rule.rule if rule else None, response.status_code)
        child = counted.get(key)
        if child is None:
            child = counted[key] = HTTP_REQUESTS.labels(key[0], path(req), str(key[2]))
        child.inc()
        return response

    def metrics() -> Response:
        registry = _scrape_registry(app, exporter_registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", exporter.do_not_track()(metrics), methods=["GET"])
