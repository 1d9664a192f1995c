"""``GET /metrics`` (Prometheus text). Counts that live in the database are read at scrape time,
so every API replica reports the same truth (CONTRACT.md §8)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Flask, Response, has_app_context
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.events.service import outbox_backlog, published_total
from app.extensions import db

log = logging.getLogger(__name__)


class OutboxCollector(Collector):
    """``outbox_pending`` and ``events_published_total``, from two indexed reads."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def describe(self) -> Iterator[Metric]:  # registering must not query the database
        yield GaugeMetricFamily("outbox_pending", "Events waiting in the outbox to be published")
        yield CounterMetricFamily("events_published", "Events published to NATS JetStream")

    def collect(self) -> Iterator[Metric]:
        try:
            if has_app_context():  # a scrape: inside this app's request
                pending, total = self._read()
            else:
                with self.app.app_context():
                    pending, total = self._read()
        except Exception as exc:  # a scrape without these beats a failed scrape
            log.warning("metrics: could not read the outbox: %s", exc.__class__.__name__)
            return
        yield GaugeMetricFamily(
            "outbox_pending", "Events waiting in the outbox to be published", value=pending
        )
        yield CounterMetricFamily(
            "events_published", "Events published to NATS JetStream", value=total
        )

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            pending, _oldest = outbox_backlog(db.session)
            return pending, published_total(db.session)
        finally:
            db.session.rollback()


def init_metrics(app: Flask) -> None:
    """A registry of this app's own (tests build many apps in one process) and the route."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(OutboxCollector(app))
    app.extensions["metrics_registry"] = registry

    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
