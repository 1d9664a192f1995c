"""The Celery broker's Redis transport keeps one Redis client per channel (real Redis)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from app.jobs import redis_transport
from app.jobs.queue import make_producer, send_task
from config.celery import celery_config
from tests.conftest import make_settings
from tests.integration.pipeline_support import claim_redis_db, release_redis_db


@pytest.fixture
def broker() -> Iterator[str]:
    url = claim_redis_db()
    try:
        yield url
    finally:
        release_redis_db(url)


@pytest.fixture
def producer(broker: str, tmp_path: Path) -> Iterator[Celery]:
    settings = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, REDIS_URL=broker)
    app = make_producer(settings)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def clients_used(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The Redis client behind each command the transport's channels send outside the poll
    loop (publish, unacked bookkeeping, ack), in order."""
    used: list[Any] = []
    acquire = redis_transport.Channel.conn_or_acquire

    @contextmanager
    def recording(self: redis_transport.Channel, client: Any = None) -> Iterator[Any]:
        with acquire(self, client) as acquired:
            used.append(acquired)
            yield acquired

    monkeypatch.setattr(redis_transport.Channel, "conn_or_acquire", recording)
    return used


def _queued(broker: str, queue: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(broker)
    try:
        return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def test_redis_broker_urls_get_the_shared_client_transport(tmp_path: Path) -> None:
    for url, expected in (
        ("redis://127.0.0.1:6379/3", "app.jobs.redis_transport:Transport"),
        ("rediss://cache.example:6380/0?ssl_cert_reqs=required", None),
        ("sentinel://127.0.0.1:26379", None),
    ):
        settings = make_settings("sqlite://", tmp_path, CELERY_BROKER_URL=url)
        assert celery_config(settings).get("broker_transport") == expected, url
    embedded = make_settings("sqlite://", tmp_path)  # no broker URL: SQLite under ./var
    assert "broker_transport" not in celery_config(embedded)


def test_tasks_sent_through_one_client_arrive_in_order(
    producer: Celery, broker: str, clients_used: list[Any]
) -> None:
    for n in range(5):
        assert send_task(producer, "registry.test.noop", [f"job-{n}"], queue="transport-test")
    with producer.connection_for_write() as connection:
        assert isinstance(connection.default_channel, redis_transport.Channel)
    messages = _queued(broker, "transport-test")
    # kombu LPUSHes and workers BRPOP: the oldest message is last in the list.
    assert [m["headers"]["argsrepr"] for m in reversed(messages)] == [
        f"['job-{n}']" for n in range(5)
    ]
    # kombu's own channel makes a new client for each publish.
    assert len(clients_used) >= 5 and len({id(client) for client in clients_used}) == 1


def test_a_new_pool_gets_a_new_client(producer: Celery, broker: str) -> None:
    # kombu drops a channel's pools after a fork (and on close): the client made on the old pool
    # must not be used again.
    with producer.connection_for_write() as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first:
            first.ping()
        old_pool = first.connection_pool
        channel._disconnect_pools()
        with channel.conn_or_acquire() as second:
            second.ping()
        assert second is not first
        assert second.connection_pool is channel.pool is not old_pool
        with channel.conn_or_acquire() as third:
            assert third is second
        given = redis.Redis.from_url(broker)
        with channel.conn_or_acquire(given) as passed:  # a caller's own client is used as is
            assert passed is given
        given.close()
