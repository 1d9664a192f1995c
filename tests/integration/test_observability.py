"""What an operator sees (CONTRACT.md §8): ``GET /metrics`` after real traffic, one trace per
registration from the request through its Celery task to the NATS publish of its events, and
log lines that are JSON objects carrying the request id and the trace id.

Each backend (PostgreSQL with the Redis broker; SQLite with the embedded SQLite broker) gets a
committing app on a database of its own. Its Celery worker is ``celery_app:celery`` loaded from
the environment an operator gives ``celery -A celery_app:celery worker``, run in a thread of
this process (solo pool) so that its spans, metrics and log lines can be observed here; the
outbox relay's loop publishes to the machine's NATS JetStream. A service that does not answer
fails the test, it never turns into a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask_migrate import upgrade
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import text
from sqlalchemy.orm import Session
from ulid import ULID

from app import create_app
from app.events.relay import NatsPublisher, OutboxRelay
from app.extensions import db
from app.jobs.queue import RUN_REGISTRATION
from app.observability import configure_logging, init_tracing, trace_engine
from config import ENV_NAMES, load_settings
from tests.conftest import (
    JWT_SECRET,
    PASSWORD,
    drop_pg_database,
    fresh_pg_database,
    make_settings,
)
from tests.integration.nats_support import SHARED_NATS_URL, read_stream, require_nats
from tests.integration.pipeline_support import (
    REDIS_BASE_URL,
    Stack,
    claim_redis_db,
    release_redis_db,
)

pytestmark = pytest.mark.integration

ROLES = ("viewer", "user", "developer", "admin")
LOG_KEYS = {"timestamp", "level", "message", "request_id", "trace_id"}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Routes served outside the OpenAPI document: the document itself and its UI.
UNDOCUMENTED_ROUTES = {"/openapi.json", "/docs"}
# The metrics CONTRACT.md §8 names, each by a sample it has once there was traffic, with the
# type of its family.
CONTRACT_METRICS = {
    "http_requests_total": "counter",
    "http_request_duration_seconds_count": "histogram",
    "db_queries_total": "counter",
    "assets_total": "gauge",
    "jobs_total": "gauge",
    "job_duration_seconds_count": "histogram",
    "events_published_total": "counter",
    "outbox_pending": "gauge",
    "cache_operations_total": "counter",
}


# ---- the stack -------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_worker(environ: dict[str, str]) -> Iterator[ModuleType]:
    """``celery_app`` (re)loaded from ``environ`` as a worker process loads it, its Celery app
    consuming the broker in a thread of this process; stopped on exit."""
    from celery.contrib.testing.worker import start_worker

    with pytest.MonkeyPatch.context() as env:
        for name in (*ENV_NAMES, "REGISTRY_CONFIG"):
            env.delenv(name, raising=False)
        for name, value in environ.items():
            env.setenv(name, value)
        if "celery_app" in sys.modules:
            module = importlib.reload(sys.modules["celery_app"])
        else:
            module = importlib.import_module("celery_app")
    try:
        with start_worker(
            module.celery,
            pool="solo",
            loglevel="INFO",
            perform_ping_check=False,
            shutdown_timeout=30,
        ):
            yield module
    finally:
        with module.flask_app.app_context():
            db.session.remove()
            db.engine.dispose()


def create_users() -> None:
    """``pipe-<role>`` for each role (the names ``Stack.api`` logs in with), hashed cheaply."""
    from argon2 import PasswordHasher

    from app.users import service

    with pytest.MonkeyPatch.context() as patch:
        cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        patch.setattr(service, "_hasher", cheap)
        for role in ROLES:
            service.create_user(f"pipe-{role}", PASSWORD, [role])


@pytest.fixture(scope="module", params=["pg", "sqlite"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A migrated, committing app on a new database, with its worker."""
    require_nats(SHARED_NATS_URL)
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"observability-{backend}")
    var = workdir / "var"
    config = workdir / "registry.toml"
    config.write_text(f"var_dir = {json.dumps(str(var))}\n")  # var_dir is a TOML-only key
    environ = {
        "REGISTRY_CONFIG": str(config),
        "REGISTRY_ENV": "production",
        "JWT_SECRET": JWT_SECRET,
        "BLOB_STORE_URL": f"file://{workdir / 'blobs'}",
        "NATS_URL": SHARED_NATS_URL,
        "RATE_LIMIT_ENABLED": "false",  # the tests poll jobs far more than 100 times a minute
        "LOG_LEVEL": "INFO",
    }
    with contextlib.ExitStack() as cleanup:
        if backend == "pg":
            database_url = fresh_pg_database("_observability")
            cleanup.callback(drop_pg_database, database_url)
            broker = claim_redis_db()
            cleanup.callback(release_redis_db, broker)
            environ.update(DATABASE_URL=database_url, REDIS_URL=broker, CELERY_BROKER_URL=broker)
        else:  # no broker URL: the embedded SQLite broker under var_dir
            database_url = f"sqlite:///{var / 'registry.db'}"
            environ["DATABASE_URL"] = database_url
        app = create_app(load_settings(environ=environ))
        with app.app_context():
            upgrade()
            create_users()
            db.session.remove()
        stack = Stack(app, database_url, workdir, environ)
        cleanup.callback(stack.stop)
        cleanup.enter_context(embedded_worker(environ))
        yield stack


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process ends, taken from the tracer provider the app sets up."""
    init_tracing()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), provider
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # spans ended later are dropped


def asset_body(
    asset_type: str = "model", prefix: str = "observed", **fields: Any
) -> dict[str, Any]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return {"asset_type": asset_type, "name": name, "version": "1.0.0", **fields}


def ghost_dependency() -> list[dict[str, str]]:
    """A dependency on a name nobody registered: the pipeline rejects the asset."""
    return [{"name": f"ghost-{uuid.uuid4().hex[:8]}", "version": "^1"}]


def settle_all(stack: Stack, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register every body, then wait for every job: the finished job documents."""
    docs = [stack.register(body) for body in bodies]
    return [stack.wait_job(doc["job"]["id"]) for doc in docs]


def sql_rows(stack: Stack, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    return stack.query(lambda s: [tuple(row) for row in s.execute(text(statement), params)])


def sql_write(stack: Stack, *statements: str, **params: Any) -> None:
    def work(session: Session) -> None:
        for statement in statements:
            session.execute(text(statement), params)
        session.commit()

    stack.query(work)


def unpublished(stack: Stack) -> int:
    return int(sql_rows(stack, "SELECT count(*) FROM events WHERE published_at IS NULL")[0][0])


def relay_until_drained(stack: Stack, timeout: float = 20) -> int:
    """The relay's loop (``llm-registry relay``) against the machine's NATS until the outbox is
    empty; returns how many events it published."""
    with stack.app.app_context():
        engine = db.engine

    async def main() -> int:
        stop = asyncio.Event()
        relay = OutboxRelay(engine, NatsPublisher(SHARED_NATS_URL))
        running = asyncio.create_task(relay.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while not running.done() and time.monotonic() < deadline:
                if await asyncio.to_thread(unpublished, stack) == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
        return relay.published

    published = asyncio.run(main())
    assert unpublished(stack) == 0, f"the relay left events unpublished after {timeout} s"
    return published


# ---- metrics ---------------------------------------------------------------------------------


class Scrape:
    """One ``GET /metrics``, parsed by prometheus_client's own parser."""

    def __init__(self, stack: Stack) -> None:
        response = stack.app.test_client().get("/metrics")
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        self.families = list(text_string_to_metric_families(response.get_data(as_text=True)))

    def samples(self, name: str) -> list[Sample]:
        """The samples called ``name`` (``http_requests_total``, ``..._bucket``)."""
        return [s for family in self.families for s in family.samples if s.name == name]

    def type_of(self, name: str) -> str:
        """The TYPE of the family that holds the samples called ``name``."""
        types = {f.type for f in self.families if any(s.name == name for s in f.samples)}
        assert len(types) == 1, (name, types)
        return types.pop()

    def value(self, name: str, **labels: str) -> float:
        """The sum of the ``name`` samples whose labels include ``labels`` (0 without any)."""
        return sum(
            s.value
            for s in self.samples(name)
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def counts(self, name: str, *label_names: str) -> dict[tuple[str, ...], int]:
        """A gauge of counts as ``{label values: n}``; its samples carry exactly ``label_names``."""
        out: dict[tuple[str, ...], int] = {}
        for s in self.samples(name):
            assert set(s.labels) == set(label_names), s
            out[tuple(s.labels[k] for k in label_names)] = int(s.value)
        return out


def assert_histograms_are_whole(scrape: Scrape, name: str) -> None:
    """Each series of histogram ``name`` has cumulative buckets up to ``+Inf``, whose count is
    the series' ``_count``."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for sample in scrape.samples(f"{name}_bucket"):
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    counts = {tuple(sorted(s.labels.items())): s.value for s in scrape.samples(f"{name}_count")}
    assert series and set(series) == set(counts), name
    for key, buckets in series.items():
        buckets.sort()
        assert buckets[-1] == (float("inf"), counts[key]), (key, buckets)
        values = [n for _, n in buckets]
        assert values == sorted(values), (key, buckets)


def moved(before: Scrape, after: Scrape, name: str) -> list[Sample]:
    """The samples of ``name`` whose value changed between the two scrapes."""
    earlier = {tuple(sorted(s.labels.items())): s.value for s in before.samples(name)}
    changed = [
        s for s in after.samples(name) if earlier.get(tuple(sorted(s.labels.items()))) != s.value
    ]
    assert changed, name
    return changed


def table_counts(stack: Stack) -> tuple[dict[tuple[str, ...], int], dict[tuple[str, ...], int]]:
    """What the tables hold: ({(asset_type, status): n}, {(kind, status): n})."""
    assets = sql_rows(
        stack, "SELECT asset_type, status, count(*) FROM assets GROUP BY asset_type, status"
    )
    jobs = sql_rows(stack, "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status")
    return (
        {(t, s): int(n) for t, s, n in assets},
        {(k, s): int(n) for k, s, n in jobs},
    )


def assert_counts_match_the_tables(stack: Stack) -> Scrape:
    scrape = Scrape(stack)
    assets, jobs = table_counts(stack)
    assert scrape.counts("assets_total", "asset_type", "status") == assets
    assert scrape.counts("jobs_total", "kind", "status") == jobs
    return scrape


def test_metrics_count_requests_by_route_template_and_time_them(stack: Stack) -> None:
    viewer = stack.api("viewer")
    developer = stack.api("developer")  # logged in before the first scrape
    anonymous = stack.app.test_client()
    documented = set(anonymous.get("/openapi.json").get_json()["paths"])
    templates = documented | UNDOCUMENTED_ROUTES | {"unmatched"}
    before = Scrape(stack)

    jobs = settle_all(
        stack,
        [asset_body(), asset_body("dataset"), asset_body(dependencies=ghost_dependency())],
    )
    assets = [stack.asset(job["asset_id"]) for job in jobs]
    assert [a["status"] for a in assets] == ["active", "active", "rejected"]
    assert developer.get(f"/v1/assets/{ULID()}").status_code == 404
    unmatched = [
        f"/no-such-page/{uuid.uuid4().hex}",
        f"/v1/assets/{assets[0]['id']}/no-such-thing",
        f"/v1/no-such-collection/{ULID()}",
    ]
    for url in unmatched:
        assert anonymous.get(url).status_code == 404, url
    assert anonymous.post("/v1/assets", json=asset_body()).status_code == 401
    assert viewer.get("/v1/assets?limit=5").status_code == 200
    after = Scrape(stack)

    # Every metric the contract names is there, with its type.
    for name, kind in CONTRACT_METRICS.items():
        assert after.samples(name), f"/metrics has no {name}"
        assert after.type_of(name) == kind, name

    # http_requests_total{method,path,status}: path is the route as the OpenAPI document writes
    # it, "unmatched" when no route matched; never the URL with its ids.
    def delta(method: str, path: str, status: str) -> float:
        labels = {"method": method, "path": path, "status": status}
        return after.value("http_requests_total", **labels) - before.value(
            "http_requests_total", **labels
        )

    assert delta("POST", "/v1/assets", "202") == 3
    assert delta("POST", "/v1/assets", "401") == 1
    assert delta("GET", "/v1/assets/{asset_id}", "200") == 3
    assert delta("GET", "/v1/assets/{asset_id}", "404") == 1
    assert delta("GET", "unmatched", "404") == len(unmatched)
    assert delta("GET", "/v1/assets", "200") == 1
    assert delta("GET", "/v1/jobs/{job_id}", "200") >= len(jobs)
    # Scrapes are not traffic: neither counter nor histogram has a /metrics series.
    assert after.value("http_requests_total", path="/metrics") == 0
    assert after.value("http_request_duration_seconds_count", path="/metrics") == 0
    raw = {a["id"] for a in assets} | {j["id"] for j in jobs} | set(unmatched)
    # (The counters are per process: other tests' apps in this process counted their own
    # routes before, so only the series this traffic moved are this app's.)
    for sample in moved(before, after, "http_requests_total"):
        assert set(sample.labels) == {"method", "path", "status"}, sample
        assert sample.labels["path"] in templates, sample
        assert not any(value in sample.labels["path"] for value in raw), sample

    # http_request_duration_seconds{method,path}: a histogram by the same templates.
    for sample in moved(before, after, "http_request_duration_seconds_count"):
        assert {"method", "path"} <= set(sample.labels), sample
        assert sample.labels["path"] in templates, sample
        assert not any(value in sample.labels["path"] for value in raw), sample

    def timed(method: str, path: str, suffix: str) -> float:
        name = f"http_request_duration_seconds_{suffix}"
        return after.value(name, method=method, path=path) - before.value(
            name, method=method, path=path
        )

    assert timed("POST", "/v1/assets", "count") == 4  # the 3 registrations and the 401
    assert timed("GET", "unmatched", "count") == len(unmatched)
    assert timed("POST", "/v1/assets", "sum") > 0
    assert_histograms_are_whole(after, "http_request_duration_seconds")

    # db_queries_total counts SQL statements, and keeps counting.
    assert 0 < before.value("db_queries_total") < after.value("db_queries_total")
    assert viewer.get("/v1/jobs?limit=5").status_code == 200
    assert Scrape(stack).value("db_queries_total") > after.value("db_queries_total")

    # job_duration_seconds{kind,step}: one observation per step a worker ran.
    ran = Counter(
        (job["kind"], step["name"]) for job in jobs for step in job["steps"] if step["started_at"]
    )
    assert ran[("registration", "dependencies")] == len(jobs)
    for (kind, step), n in ran.items():
        labels = {"kind": kind, "step": step}
        observed = after.value("job_duration_seconds_count", **labels)
        assert observed - before.value("job_duration_seconds_count", **labels) == n
        assert after.value("job_duration_seconds_sum", **labels) > 0
    for sample in after.samples("job_duration_seconds_count"):
        assert set(sample.labels) == {"kind", "step"}, sample
    assert_histograms_are_whole(after, "job_duration_seconds")

    # cache_operations_total{operation,result}: single-asset reads go through the cache (Redis
    # on the pg stack, in-process on SQLite): the reads after the verdicts missed, a repeat hits.
    def cache(scrape: Scrape, result: str) -> float:
        return scrape.value("cache_operations_total", operation="get", result=result)

    assert cache(after, "miss") - cache(before, "miss") >= len(assets)
    for _ in range(2):
        assert viewer.get(f"/v1/assets/{assets[0]['id']}").status_code == 200
    cached = Scrape(stack)
    assert cache(cached, "hit") >= cache(after, "hit") + 1
    # Each authenticated request also looks its caller up: the two reads made 4 lookups at least.
    assert (
        cache(cached, "hit") + cache(cached, "miss")
        >= cache(after, "hit") + cache(after, "miss") + 4
    )
    for sample in cached.samples("cache_operations_total"):
        assert set(sample.labels) == {"operation", "result"}, sample


def test_asset_and_job_counts_follow_inserts_status_changes_and_deletes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    developer = stack.api("developer")
    assert_counts_match_the_tables(stack)

    # Inserts, and the pipeline moving assets and jobs through their statuses.
    jobs = settle_all(
        stack,
        [
            asset_body(prefix="counted"),
            asset_body(prefix="counted"),
            asset_body("dataset", prefix="counted"),
            asset_body(prefix="counted", dependencies=ghost_dependency()),
        ],
    )
    deprecated, deleted, _dataset, rejected = (job["asset_id"] for job in jobs)
    assert stack.asset(rejected)["status"] == "rejected"
    scrape = assert_counts_match_the_tables(stack)
    assets = scrape.counts("assets_total", "asset_type", "status")
    assert assets[("model", "rejected")] >= 1 and assets[("dataset", "active")] >= 1
    assert scrape.counts("jobs_total", "kind", "status")[("registration", "succeeded")] >= 4

    # A status change through the API.
    response = developer.patch(f"/v1/assets/{deprecated}", json={"status": "deprecated"})
    assert response.status_code == 200, response.get_json()
    scrape = assert_counts_match_the_tables(stack)
    assets_now = scrape.counts("assets_total", "asset_type", "status")
    assert assets_now[("model", "deprecated")] == assets.get(("model", "deprecated"), 0) + 1
    assert assets_now[("model", "active")] == assets[("model", "active")] - 1

    # The API's delete is a soft delete: the row keeps its status, and is counted under it.
    assert developer.delete(f"/v1/assets/{deleted}").status_code == 204
    assert developer.get(f"/v1/assets/{deleted}").status_code == 404
    before_delete = assets_now
    scrape = assert_counts_match_the_tables(stack)
    assert scrape.counts("assets_total", "asset_type", "status") == before_delete

    # A hard delete (an operator purging rows; the API has none) is counted too: the counts are
    # kept by triggers on the tables.
    jobs_before = scrape.counts("jobs_total", "kind", "status")
    sql_write(
        stack,
        "DELETE FROM jobs WHERE asset_id = :id",
        "DELETE FROM assets WHERE id = :id",
        id=rejected,
    )
    scrape = assert_counts_match_the_tables(stack)
    assets_now = scrape.counts("assets_total", "asset_type", "status")
    assert assets_now.get(("model", "rejected"), 0) == before_delete[("model", "rejected")] - 1
    jobs_now = scrape.counts("jobs_total", "kind", "status")
    assert jobs_now[("registration", "succeeded")] == jobs_before[("registration", "succeeded")] - 1

    # On a busy registry a scrape folds the trigger-written deltas into the totals (every
    # FOLD_AFTER of them): the counts read the same through a fold and after it.
    from app.stats import service as stats

    monkeypatch.setattr(stats, "FOLD_AFTER", 1)
    assert_counts_match_the_tables(stack)  # this scrape folds
    assert sql_rows(stack, "SELECT count(*) FROM status_count_deltas")[0][0] == 0
    assert_counts_match_the_tables(stack)  # read from the folded totals


def test_outbox_pending_and_events_published_follow_the_relay(stack: Stack) -> None:
    settle_all(stack, [asset_body(prefix="relayed")])
    waiting = unpublished(stack)
    assert waiting >= 3  # registered, and the verdict's events
    before = Scrape(stack)
    assert before.value("outbox_pending") == waiting

    published = relay_until_drained(stack)

    after = Scrape(stack)
    assert published == waiting
    assert after.value("outbox_pending") == unpublished(stack) == 0
    published_total = after.value("events_published_total")
    assert published_total - before.value("events_published_total") == waiting


# ---- tracing ---------------------------------------------------------------------------------


def chain_to_root(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """``span`` and its ancestors up to the root; each of them must have been recorded."""
    chain = [span]
    while chain[-1].parent is not None:
        parent = by_id.get(chain[-1].parent.span_id)
        assert parent is not None, f"{chain[-1].name}: its parent span was not recorded"
        chain.append(parent)
    return chain


def span_ids(spans: list[ReadableSpan]) -> set[int]:
    return {s.context.span_id for s in spans}


def is_sql(span: ReadableSpan) -> bool:
    system = (span.attributes or {}).get("db.system")
    return span.kind == SpanKind.CLIENT and system in ("postgresql", "sqlite")


def trace_sql(stack: Stack) -> None:
    """SQL spans from the API's and the worker's engines, as create_app turns them on when
    OTEL_EXPORTER_OTLP_ENDPOINT is set (the spans here go to an in-memory exporter)."""
    for app in (stack.app, sys.modules["celery_app"].flask_app):
        with app.app_context():
            trace_engine(db.engine)


def test_sql_is_traced_only_when_spans_are_exported(tmp_path: Path) -> None:
    init_tracing()  # this process's provider is set up already: no exporter is added below
    for endpoint, traced in ((None, False), ("http://127.0.0.1:4318", True)):
        extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} if endpoint else {}
        app = create_app(make_settings(f"sqlite:///{tmp_path / 'r.db'}", tmp_path, **extra))
        with app.app_context():
            assert getattr(db.engine, "_registry_traced", False) is traced
            db.engine.dispose()


def test_a_registration_is_one_trace_from_request_to_nats(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    developer = stack.api("developer")  # logged in before the spans are collected
    trace_sql(stack)
    spans.clear()
    response = developer.post("/v1/assets", json=asset_body(prefix="traced"))
    assert response.status_code == 202, response.get_json()
    servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == ["POST /v1/assets"]
    server = servers[0]
    assert (server.attributes or {}).get("http.response.status_code") == 202
    trace_id = server.context.trace_id
    asset_id = response.get_json()["id"]
    assert stack.wait_job(response.get_json()["job"]["id"])["status"] == "succeeded"
    relay_until_drained(stack)

    finished = list(spans.get_finished_spans())
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in in_trace}
    # One trace, rooted in the request: every span of it leads back there.
    for span in in_trace:
        assert chain_to_root(span, by_id)[-1] is server, span.name

    # The task run continues the request's trace (its traceparent travels on the message).
    started = server.start_time or 0
    runs = [
        s for s in finished if s.name == f"run {RUN_REGISTRATION}" and (s.start_time or 0) > started
    ]
    assert runs, "the task run has no span"
    assert all(r.context.trace_id == trace_id and r.kind == SpanKind.CONSUMER for r in runs)
    run_ids = span_ids(runs)
    # ... under the request's Celery publish span.
    sends = [s for s in in_trace if s.name == f"send {RUN_REGISTRATION}"]
    assert len(sends) == 1 and sends[0].kind == SpanKind.PRODUCER
    assert chain_to_root(sends[0], by_id)[-1] is server
    assert any(r.parent is not None and r.parent.span_id == sends[0].context.span_id for r in runs)

    # SQL spans: the request's own statements and the worker's, all in the trace.
    sql = [s for s in in_trace if is_sql(s)]
    in_task = [s for s in sql if run_ids & span_ids(chain_to_root(s, by_id))]
    assert in_task, "no SQL span under the task run"
    assert len(in_task) < len(sql), "no SQL span under the request"

    # The relay publishes every event of the registration within the trace.
    rows = stack.events(asset_id)
    assert [r.type for r in rows][:1] == ["asset_registered"]
    publishes = {
        (s.attributes or {}).get("messaging.message.id"): s
        for s in finished
        if s.kind == SpanKind.PRODUCER
        and str((s.attributes or {}).get("messaging.destination.name")).endswith(f".{asset_id}")
    }
    assert set(publishes) == {r.id for r in rows}
    for row in rows:
        publish = publishes[row.id]
        assert publish.context.trace_id == trace_id, row.type
        assert publish.name == f"publish registry.events.{row.type}.{asset_id}"
        assert (publish.attributes or {}).get("messaging.system") == "nats"
    # The registration's event was written by the request, the verdict's by the task.
    assert not run_ids & span_ids(chain_to_root(publishes[rows[0].id], by_id))
    assert run_ids & span_ids(chain_to_root(publishes[rows[-1].id], by_id))

    # What subscribers receive carries the trace: the CloudEvent's traceparent names the span
    # that made the change (the publish span's parent), the NATS header the publish span.
    messages = read_stream(SHARED_NATS_URL, f"registry.events.*.{asset_id}", len(rows), grace=0.2)
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [r.id for r in rows]
    for message in messages:
        publish = publishes[message.headers["Nats-Msg-Id"]]
        version, event_trace, parent, _flags = message.event["traceparent"].split("-")
        assert (version, event_trace) == ("00", f"{trace_id:032x}")
        assert message.event["traceid"] == f"{trace_id:032x}"
        assert publish.parent is not None and publish.parent.span_id == int(parent, 16)
        header = message.headers["traceparent"].split("-")
        assert header[:3] == ["00", f"{trace_id:032x}", f"{publish.context.span_id:016x}"]
    feed = stack.api("viewer").get(f"/v1/events?asset_id={asset_id}&limit=100").get_json()
    assert len(feed["items"]) == len(rows)
    assert {e["traceparent"].split("-")[1] for e in feed["items"]} == {f"{trace_id:032x}"}


# ---- logs ------------------------------------------------------------------------------------


def parse_log(output: str) -> list[dict[str, Any]]:
    """Every non-empty line of ``output`` as the JSON object it must be."""
    records = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert set(record) >= LOG_KEYS, line
        assert dt.datetime.fromisoformat(record["timestamp"]).tzinfo is not None, line
        assert record["level"] in LEVELS, line
        assert isinstance(record["message"], str) and record["message"], line
        records.append(record)
    return records


def about_job(record: dict[str, Any], job_id: str) -> bool:
    return job_id in record["message"] or job_id in json.dumps(record.get("data"))


def test_log_lines_are_json_with_the_request_and_trace_ids(
    stack: Stack, spans: InMemorySpanExporter, capfd: pytest.CaptureFixture[str]
) -> None:
    developer = stack.api("developer")
    stack.api("viewer")  # both logged in before the capture starts
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    output = ""
    registrations: list[tuple[str, dict[str, Any]]] = []
    try:
        capfd.readouterr()
        configure_logging("INFO")  # as create_app and celery_app do: onto the captured stderr
        spans.clear()
        for _ in range(2):  # two, so that one's lines could show the other's ids
            request_id = f"obs-{uuid.uuid4()}"
            response = developer.post(
                "/v1/assets", json=asset_body(prefix="logged"), headers={"X-Request-ID": request_id}
            )
            assert response.status_code == 202, response.get_json()
            assert response.headers["X-Request-ID"] == request_id
            registrations.append((request_id, stack.wait_job(response.get_json()["job"]["id"])))
        # Celery logs a task's outcome just after the task returns: wait for the last one's.
        last_job = registrations[-1][1]["id"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            output += "".join(capfd.readouterr())
            if any(
                about_job(r, last_job) and "succeeded" in r["message"] for r in parse_log(output)
            ):
                break
            time.sleep(0.05)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    output += "".join(capfd.readouterr())  # standard output and error: JSON lines, both

    records = parse_log(output)
    servers = sorted(
        (
            s
            for s in spans.get_finished_spans()
            if s.kind == SpanKind.SERVER and s.name == "POST /v1/assets"
        ),
        key=lambda s: s.end_time or 0,
    )
    assert len(servers) == len(registrations)
    for (request_id, job), server in zip(registrations, servers, strict=True):
        trace_id = f"{server.context.trace_id:032x}"
        request_lines = [
            r
            for r in records
            if r.get("logger") == "registry.request" and r["request_id"] == request_id
        ]
        assert [r["message"] for r in request_lines] == ["POST /v1/assets 202"]
        assert request_lines[0]["trace_id"] == trace_id
        # A request id and its trace go together.
        for record in records:
            if record["request_id"] == request_id:
                assert record["trace_id"] in (None, trace_id), record
            if record["trace_id"] == trace_id:
                assert record["request_id"] == request_id, record
        # The worker's lines about the job: never another request's id or trace.
        task_lines = [
            r for r in records if about_job(r, job["id"]) and r.get("logger") != "registry.request"
        ]
        assert task_lines, f"no log line about job {job['id']}:\n{output[-3000:]}"
        for record in task_lines:
            assert record["request_id"] in (None, request_id), record
            assert record["trace_id"] in (None, trace_id), record


def test_redis_commands_are_traced_when_spans_are_exported(spans: InMemorySpanExporter) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, init_tracing traces every Redis command (without
    an exporter nobody would see those spans, so they are not made)."""
    import redis

    from app.observability import trace_redis

    trace_redis()
    key = f"llm-registry-tests:traced:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        client.set(key, "1", ex=10)
    client.close()
    commands = [
        s
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("db.system") == "redis"
        and s.parent is not None
        and s.parent.span_id == caller.get_span_context().span_id
    ]
    assert [s.name for s in commands] == ["SET"], [s.name for s in commands]
