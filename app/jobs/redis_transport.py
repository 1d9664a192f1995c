"""kombu's Redis transport, with one Redis client per channel for its commands.

kombu makes a new ``redis.Redis`` for every command it sends outside the consumer's poll loop:
each task published, each message delivered (recorded as unacked) and each ack. Making one
builds the client's table of reply callbacks, about 60 us: three times per registration, the
API's publish and the worker's delivery and ack. A client is only a front to the channel's
connection pool, safe to share between threads, so this channel keeps one and makes a new one
only when the pool changed (kombu drops its pools after a fork and on close).

``config.celery`` selects it for ``redis://`` broker URLs; the others (``rediss://``, sentinel,
the embedded SQLite broker) keep kombu's own transports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()  # type: ignore[no-untyped-call]
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
