"""Read-through cache of what the hot path reads, invalidated on every change.

Two kinds of entries: single-asset reads (``GET /v1/assets/{id}``: the asset's ETag and its JSON
body, so a hit costs at most one cache round trip and no database work) and users'
authentication state (roles, disabled: read by every request's authentication). Any commit that
touches an asset row, its tags or dependencies, or a user (API, worker or beat alike: the hooks
below are on every SQLAlchemy session) drops that entry once the transaction has committed; so a
demotion or a disable still takes effect at the next request. On Redis, what a process read is
kept in its memory until Redis pushes the notice that it changed (``TrackedReader``): a repeated
read costs no round trip, and another process's change counts once its notice has arrived (on
loopback, well under a millisecond after the write; a connection that went silent is doubted
after a second).

A reader that misses reads the key's *generation* before it reads the database and stores its
answer only if the generation is still the same; invalidation bumps the generation and deletes the
entry together. So a reader that read the row just before a change commits cannot put the old
answer back after the change invalidated it.

Backends, chosen by the settings (CONTRACT.md §8):

- ``REDIS_URL`` set: Redis, shared by every API replica, invalidated by every process.
- No Redis, SQLite (the embedded default): an in-process cache. Other processes (the worker, the
  scheduler) cannot reach it, so every read first asks SQLite whether any other connection has
  committed since the last read (``PRAGMA data_version``, answered from memory) and empties the
  cache when one has: never stale, if less often warm while workers write.
- No Redis, another database: no cache (reads are counted as ``bypass``).

An ORM bulk UPDATE or DELETE of those rows (which the session cannot name) forgets every entry
at its commit. Raw SQL that changes them behind the ORM's back must do the same
(``current_read_cache().invalidate_all()``).

With Redis down, reads go to the database (``error``), and the cache is left alone for a few
seconds instead of costing every request a timeout. Entries expire after ``ENTRY_TTL_SECONDS``, a
bound on staleness should an invalidation itself fail while Redis is away.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Protocol, cast

import redis
from cachetools import TTLCache
from flask import current_app, g, has_app_context, has_request_context
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from app.metrics import CACHE_OPERATIONS

log = logging.getLogger(__name__)

# The hot path's label children: ``labels()`` validates and looks its arguments up at each call.
_GET_HIT = CACHE_OPERATIONS.labels("get", "hit")
_GET_MISS = CACHE_OPERATIONS.labels("get", "miss")

ENTRY_TTL_SECONDS = 3600
GENERATION_TTL_SECONDS = 86400
BACKOFF_SECONDS = 5.0
_CHANGED = "registry_cache_changed_keys"
_CHANGED_ALL = "registry_cache_changed_everything"


class Entry(Protocol):
    etag: str
    body: bytes


class CachedEntry:
    __slots__ = ("body", "etag")

    def __init__(self, etag: str, body: bytes) -> None:
        self.etag = etag
        self.body = body

    def encode(self) -> bytes:
        return self.etag.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedEntry:
        etag, _, body = raw.partition(b"\n")
        return cls(etag.decode(), body)


class ReadCache:
    """The interface the asset route uses; this base class caches nothing."""

    backend = "none"

    def lookup(self, key: str) -> tuple[CachedEntry | None, object]:
        """The cached answer (or None) and a token to pass to ``store`` after a miss."""
        CACHE_OPERATIONS.labels("get", "bypass").inc()
        return None, None

    def lookup_with(
        self, key: str, others: list[str], url: str
    ) -> tuple[CachedEntry | None, object, list[bytes | None]] | None:
        """``lookup`` plus the raw values of ``others`` (keys of the Redis at ``url``) in the
        same round trip; None when this cache cannot (not Redis, another server, Redis away)."""
        return None

    def lookup_many(self, keys: list[str]) -> list[tuple[CachedEntry | None, object]]:
        """``lookup`` of each key (a list page's assets), in one round trip where it can."""
        return [self.lookup(key) for key in keys]

    def store(self, key: str, token: object, entry: CachedEntry) -> None:
        """Keep ``entry`` unless the key changed since the ``lookup`` that gave ``token``."""

    def store_many(self, stores: list[tuple[str, object, CachedEntry]]) -> None:
        """``store`` of each (key, token, entry)."""
        for key, token, entry in stores:
            self.store(key, token, entry)

    def invalidate(self, keys: Iterable[str]) -> None:
        """Forget these assets (called after a commit that changed them)."""

    def invalidate_all(self) -> None:
        """Forget every asset (after a bulk UPDATE or DELETE whose rows are not known)."""

    def close(self) -> None:
        pass


_STORE_IF_UNCHANGED = """
local gen = redis.call('GET', KEYS[2])
local epoch = redis.call('GET', KEYS[3])
if (gen or '') == ARGV[1] and (epoch or '') == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  return 1
end
return 0
"""


TRACKED_MAX_AGE_SECONDS = 60.0
TRACKED_MAX_BYTES = 8 * 1024 * 1024  # per reader (thread): all of it is dropped past this
TRACKED_SILENCE_SECONDS = 1.0  # heard nothing for this long: ask Redis before answering
_READERS: weakref.WeakSet[TrackedReader] = weakref.WeakSet()
_READERS_LOCK = threading.Lock()
_PUSHED = object()  # what reading a push notice returns, as opposed to a reply
_forks = 0  # how many forks made this process: a cheaper test than os.getpid() (a system call)


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


class TrackedReader:
    """One thread's connection for the hot-path MGET, with Redis's server-assisted client-side
    caching (RESP3 ``CLIENT TRACKING``): Redis remembers the keys this connection read and
    pushes an invalidation on it when any client changes (or expires, or evicts) one of them.
    So a value read here is answered from memory until then, and a cached read costs no round
    trip at all (one Redis round trip was a quarter of the bare-Flask ceiling's throughput).

    Before answering from memory it reads the invalidations that have arrived; so a change is
    seen as soon as Redis's notice of it reaches this process. A change this process made is
    forgotten here at once (``forget_locally``), not when the notice arrives. The values go
    with the connection: a connection that fails, or is replaced, starts empty, so a notice
    lost with it cannot leave a stale value behind; and one that has been silent for
    ``TRACKED_SILENCE_SECONDS`` is asked (PING) before memory answers, so a connection that
    died without a word (a NAT or a failover dropping it) is found out within about a second
    plus the socket timeout, not trusted until the values age out. Each value is also read again
    after ``TRACKED_MAX_AGE_SECONDS``, and all are dropped past ``TRACKED_MAX_BYTES``.

    redis-py's own client-side cache (``cache_config``) needs Redis 7.4; tracking itself is
    Redis 6's."""

    def __init__(self, pool: Any) -> None:
        kwargs = {**pool.connection_kwargs, "protocol": 3}
        # Its own health check would reconnect behind our back, without tracking (a failure
        # must reach _mget, which drops this reader with its values), and so could the
        # handling of maintenance notices: neither on this connection.
        kwargs["health_check_interval"] = 0
        kwargs.pop("maint_notifications_config", None)
        kwargs.pop("maint_notifications_pool_handler", None)
        self.connection: Any = pool.connection_class(**kwargs)
        self.values: dict[str, tuple[float, bytes | None]] = {}
        self.size = 0
        self.forgotten = 0  # bumped by forget(): a fetch that overlapped one keeps nothing
        self.heard = time.monotonic()  # when anything last came from Redis on it
        self.forks = _forks  # a reader made before a fork is not the child's (its socket)
        try:
            self.connection.connect()
            self.socket = self.connection._sock
            parser = self.connection._parser
            parser.set_invalidation_push_handler(self._invalidated)
            parser.set_pubsub_push_handler(lambda _message: _PUSHED)
            if self._call("CLIENT", "TRACKING", "ON") not in (b"OK", "OK"):
                raise redis.ConnectionError("Redis refused CLIENT TRACKING")
        except Exception:
            self.connection.disconnect()
            raise
        with _READERS_LOCK:
            _READERS.add(self)

    def _call(self, *command: Any) -> Any:
        """Send ``command`` and return its reply, applying the notices read before it one by
        one (redis-py would recurse once per notice: a burst of them overflowed the stack)."""
        self.connection.send_command(*command)
        while True:
            reply = self.connection.read_response(push_request=True)
            if reply is not _PUSHED and reply is not None:  # None: a notice nobody handles
                self.heard = time.monotonic()
                return reply

    def _invalidated(self, message: list[Any]) -> object:
        keys = message[1] if len(message) > 1 else None
        if keys is None:  # FLUSHDB, FLUSHALL, or Redis dropped its tracking table
            self._clear()
        else:
            self.forget(key.decode() if isinstance(key, bytes) else key for key in keys)
        return _PUSHED

    def _clear(self) -> None:
        self.forgotten += 1
        self.values.clear()
        self.size = 0

    def forget(self, keys: Iterable[str]) -> None:
        self.forgotten += 1
        for key in keys:
            self._drop(key)

    def _drop(self, key: str) -> None:
        held = self.values.pop(key, None)
        if held is not None:
            self.size -= _footprint(key, held[1])

    def _hold(self, key: str, expires: float, value: bytes | None) -> None:
        self._drop(key)  # an aged-out value of the key, read again: not counted twice
        self.values[key] = (expires, value)
        self.size += _footprint(key, value)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        connection = self.connection
        if connection._sock is not self.socket:
            raise redis.ConnectionError("the tracked connection was replaced")
        while connection.can_read():  # the invalidations that have arrived meanwhile
            connection.read_response(push_request=True)
            self.heard = time.monotonic()
        now = time.monotonic()
        if now - self.heard > TRACKED_SILENCE_SECONDS:
            self._call("PING")  # raises (timeout) when the connection is gone
        values = self.values
        known: dict[str, bytes | None] = {}
        missing: list[str] = []
        for key in keys:
            held = values.get(key)
            if held is not None and held[0] > now:
                known[key] = held[1]
            else:
                missing.append(key)
        if missing:
            forgotten = self.forgotten
            # Notices that come before the answer are applied as they are read; the answer
            # itself is newer than any of them.
            fetched: list[bytes | None] = self._call("MGET", *missing)
            # A forget (this process changed a key) or a notice that came while the answer
            # was on its way may concern these keys: keep none of the answer then.
            keep = forgotten == self.forgotten
            expires = now + TRACKED_MAX_AGE_SECONDS
            for key, value in zip(missing, fetched, strict=True):
                known[key] = value
                if keep:
                    self._hold(key, expires, value)
            if self.size > TRACKED_MAX_BYTES:
                self._clear()
        return [known[key] for key in keys]

    def close(self) -> None:
        with _READERS_LOCK:
            _READERS.discard(self)
        self._clear()
        self.connection.disconnect()


def _footprint(key: str, value: bytes | None) -> int:
    return len(key) + (len(value) if value is not None else 0)


def forget_locally(keys: Iterable[str]) -> None:
    """Drop ``keys`` from every tracked reader of this process: a change made here is read
    back at once, not when Redis's invalidation notice arrives."""
    keys = list(keys)
    with _READERS_LOCK:
        readers = list(_READERS)
    for reader in readers:
        reader.forget(keys)


class RedisReadCache(ReadCache):
    backend = "redis"
    prefix = "llm-registry:cache:"

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
        )
        self._store_script = self.client.register_script(_STORE_IF_UNCHANGED)
        self._down_until = 0.0
        self._reader = threading.local()  # this thread's own connection for the hot-path MGET

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        """MGET on a connection this thread owns (``TrackedReader``): without redis-py's pool
        checkout, retry wrapper and release around it, and answered from the values it read
        before as long as Redis has not said they changed. A connection that fails is dropped,
        with every value it remembered, and the command sent once more on a new one (what
        redis-py's retry would do), then the error is the caller's."""
        try:
            return self._mget_once(keys)
        except (redis.ConnectionError, redis.TimeoutError):
            return self._mget_once(keys)

    def _mget_once(self, keys: list[str]) -> list[bytes | None]:
        reader: TrackedReader | None = getattr(self._reader, "tracked", None)
        if reader is None or reader.forks != _forks:
            reader = self._reader.tracked = TrackedReader(self.client.connection_pool)
        try:
            return reader.mget(keys)
        except Exception:
            reader.close()
            self._reader.tracked = None
            raise

    def _keys(self, key: str) -> list[str]:
        """The entry, the asset's generation, and the epoch (bumped to forget every entry)."""
        return [f"{self.prefix}{key}", f"{self.prefix}{key}:gen", f"{self.prefix}epoch"]

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, operation: str, exc: Exception) -> None:
        CACHE_OPERATIONS.labels(operation, "error").inc()
        if self._available():
            log.warning(
                "cache: Redis unavailable (%s), reads go to the database for %.0f s",
                type(exc).__name__,
                BACKOFF_SECONDS,
            )
        self._down_until = time.monotonic() + BACKOFF_SECONDS

    def lookup(self, key: str) -> tuple[CachedEntry | None, object]:
        prefetched = _take_prefetched(key)
        if prefetched is not None:
            return prefetched
        if not self._available():
            CACHE_OPERATIONS.labels("get", "error").inc()
            return None, None
        try:
            raw, generation, epoch = self._mget(self._keys(key))
        except Exception as exc:
            self._failed("get", exc)
            return None, None
        return self._found(raw, generation, epoch)

    def lookup_with(
        self, key: str, others: list[str], url: str
    ) -> tuple[CachedEntry | None, object, list[bytes | None]] | None:
        """Also fetches the keys this request said it will read (``prefetch``), so that an
        authenticated read of a cached asset costs one round trip in all."""
        if url != self.url or not self._available():
            return None
        wanted, prefetched = _wanted_keys()
        keys = [*self._keys(key), *(k for w in wanted for k in self._keys(w)[:2]), *others]
        try:
            raw, generation, epoch, *values = self._mget(keys)
        except Exception as exc:
            self._failed("get", exc)
            return None
        for index, wanted_key in enumerate(wanted):
            found = self._found(values[2 * index], values[2 * index + 1], epoch)
            prefetched[wanted_key] = found
        entry, token = self._found(raw, generation, epoch)
        return entry, token, values[2 * len(wanted) :]

    def lookup_many(self, keys: list[str]) -> list[tuple[CachedEntry | None, object]]:
        if not keys:
            return []
        if not self._available():
            CACHE_OPERATIONS.labels("get", "error").inc(len(keys))
            return [(None, None)] * len(keys)
        # Each entry and its generation, and the epoch once: one MGET for the whole page.
        wanted = [k for key in keys for k in self._keys(key)[:2]]
        try:
            *values, epoch = self._mget([*wanted, self._keys("")[2]])
        except Exception as exc:
            self._failed("get", exc)
            return [(None, None)] * len(keys)
        return [self._found(values[2 * i], values[2 * i + 1], epoch) for i in range(len(keys))]

    def _found(
        self, raw: bytes | None, generation: bytes | None, epoch_raw: bytes | None
    ) -> tuple[CachedEntry | None, object]:
        epoch = (epoch_raw or b"").decode()
        if raw is not None:
            entry_epoch, _, rest = raw.partition(b"\n")
            if entry_epoch.decode() == epoch:
                _GET_HIT.inc()
                return CachedEntry.decode(rest), None
        _GET_MISS.inc()
        return None, ((generation or b"").decode(), epoch)

    def store(self, key: str, token: object, entry: CachedEntry) -> None:
        self.store_many([(key, token, entry)])

    def store_many(self, stores: list[tuple[str, object, CachedEntry]]) -> None:
        stores = [item for item in stores if isinstance(item[1], tuple)]
        if not stores or not self._available():
            return
        calls = [
            self._store_call(key, cast(tuple[str, str], token), entry)
            for key, token, entry in stores
        ]
        try:
            if len(calls) == 1:  # one EVALSHA: a pipeline would first ask SCRIPT EXISTS
                results = [self._store_script(**calls[0])]
            else:
                # Each store checks its own generation (a change since the lookup keeps the
                # entry out); all of them in one pipeline.
                pipe = self.client.pipeline(transaction=False)
                for call in calls:
                    self._store_script(**call, client=pipe)
                results = pipe.execute()
        except Exception as exc:
            self._failed("set", exc)
            return
        forget_locally(f"{self.prefix}{key}" for key, _, _ in stores)
        stored = sum(1 for result in results if result)
        if stored:
            CACHE_OPERATIONS.labels("set", "ok").inc(stored)
        if len(results) - stored:
            CACHE_OPERATIONS.labels("set", "stale").inc(len(results) - stored)

    def _store_call(self, key: str, token: tuple[str, str], entry: CachedEntry) -> dict[str, Any]:
        generation, epoch = token
        return {
            "keys": self._keys(key),
            "args": [
                generation,
                epoch,
                epoch.encode() + b"\n" + entry.encode(),
                ENTRY_TTL_SECONDS,
            ],
        }

    def invalidate(self, keys: Iterable[str]) -> None:
        ids = sorted(set(keys))
        if not ids:
            return
        try:
            pipe = self.client.pipeline(transaction=True)
            for key in ids:
                key, generation, _epoch = self._keys(key)
                pipe.incr(generation)
                pipe.expire(generation, GENERATION_TTL_SECONDS)
                pipe.delete(key)
            pipe.execute()
        except Exception as exc:
            # The change has committed; its entry may outlive it until ENTRY_TTL_SECONDS.
            self._failed("delete", exc)
            log.error("cache: could not invalidate %d asset(s): %s", len(ids), exc)
            return
        finally:  # after the write: what this process reads next is read again
            forget_locally(k for key in ids for k in self._keys(key)[:2])
        CACHE_OPERATIONS.labels("delete", "ok").inc(len(ids))

    def invalidate_all(self) -> None:
        try:
            self.client.incr(self._keys("")[2])
        except Exception as exc:
            self._failed("delete", exc)
            log.error("cache: could not invalidate every asset: %s", exc)
            return
        finally:
            forget_locally([self._keys("")[2]])
        CACHE_OPERATIONS.labels("delete", "ok").inc()

    def close(self) -> None:
        reader: TrackedReader | None = getattr(self._reader, "tracked", None)
        if reader is not None:
            reader.close()
        self.client.close()


class SqliteMemoryReadCache(ReadCache):
    """In-process entries, emptied whenever another connection has committed to the database."""

    backend = "memory"

    def __init__(self, database_path: str, maxsize: int = 10_000) -> None:
        self._entries: TTLCache[str, CachedEntry] = TTLCache(maxsize, ENTRY_TTL_SECONDS)
        self._generations: dict[str, int] = {}
        self._epoch = 0  # bumped when the whole cache is emptied
        self._lock = threading.Lock()
        self._path = database_path
        self._watch: sqlite3.Connection | None = None
        self._pid = 0
        self._data_version: int | None = None

    def _read_data_version(self) -> int:
        # A connection that only ever reads data_version, which changes when any other
        # connection (this process's pool included) commits. Opened per process: a connection
        # must not cross a fork (gunicorn's, Celery's).
        if self._watch is None or self._pid != os.getpid():
            self._watch = sqlite3.connect(self._path, check_same_thread=False)
            self._pid = os.getpid()
            self._data_version = None
        row = self._watch.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _sync(self) -> None:
        """Called holding the lock: empty the cache if the database changed under it."""
        version = self._read_data_version()
        if version != self._data_version:
            self._data_version = version
            self._forget_all()

    def lookup(self, key: str) -> tuple[CachedEntry | None, object]:
        with self._lock:
            try:
                self._sync()
            except sqlite3.Error as exc:
                CACHE_OPERATIONS.labels("get", "error").inc()
                log.warning("cache: could not read SQLite's data_version: %s", exc)
                return None, None
            entry = self._entries.get(key)
            token = (self._epoch, self._generations.get(key, 0))
        (_GET_HIT if entry is not None else _GET_MISS).inc()
        return entry, None if entry is not None else token

    def store(self, key: str, token: object, entry: CachedEntry) -> None:
        if token is None:
            return
        with self._lock:
            try:
                self._sync()
            except sqlite3.Error:
                return
            if token == (self._epoch, self._generations.get(key, 0)):
                self._entries[key] = entry
                result = "ok"
            else:
                result = "stale"
        CACHE_OPERATIONS.labels("set", result).inc()

    def invalidate(self, keys: Iterable[str]) -> None:
        ids = set(keys)
        if not ids:
            return
        with self._lock:
            for key in ids:
                self._generations[key] = self._generations.get(key, 0) + 1
                self._entries.pop(key, None)
            if len(self._generations) > 100_000:  # bounded: forgetting all is safe, see _epoch
                self._forget_all()
        CACHE_OPERATIONS.labels("delete", "ok").inc(len(ids))

    def invalidate_all(self) -> None:
        with self._lock:
            self._forget_all()
        CACHE_OPERATIONS.labels("delete", "ok").inc()

    def _forget_all(self) -> None:
        self._generations.clear()
        self._entries.clear()
        self._epoch += 1

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None


def make_read_cache(redis_url: str | None, database_url: str) -> ReadCache:
    if redis_url:
        return RedisReadCache(redis_url)
    if database_url.startswith("sqlite:///") and ":memory:" not in database_url:
        return SqliteMemoryReadCache(database_url.removeprefix("sqlite:///"))
    return ReadCache()


# ---- invalidation: every session, every process ------------------------------------------------


def asset_key(asset_id: str) -> str:
    return f"asset:{asset_id}"


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def _changed_keys(objects: Iterable[Any]) -> set[str]:
    """The cache keys of what these flushed rows change: an asset (its row, tags, dependencies),
    a user (roles, disabled: what every request's authentication reads)."""
    from app.assets.models import Asset, AssetDependency, AssetTag
    from app.users.models import User

    keys: set[str] = set()
    for obj in objects:
        if isinstance(obj, Asset):
            keys.add(asset_key(obj.id))
        elif isinstance(obj, AssetTag | AssetDependency):
            keys.add(asset_key(obj.asset_id))
        elif isinstance(obj, User) and obj.id is not None:
            keys.add(user_key(obj.id))
    return keys


@event.listens_for(Session, "after_flush")
def _collect_changed_keys(session: Session, _context: Any) -> None:
    ids = _changed_keys([*session.new, *session.dirty, *session.deleted])
    if ids:
        session.info.setdefault(_CHANGED, set()).update(ids)


@event.listens_for(Session, "do_orm_execute")
def _notice_bulk_changes(state: ORMExecuteState) -> None:
    """An ORM bulk UPDATE/DELETE (or INSERT of tags or dependencies) of asset rows: which
    assets it changes is not known here, so the commit forgets them all."""
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    from app.assets.models import Asset, AssetDependency, AssetTag
    from app.users.models import User

    mapper = state.bind_mapper
    watched = (
        (AssetTag, AssetDependency) if state.is_insert else (Asset, AssetTag, AssetDependency, User)
    )
    if mapper is not None and mapper.class_ in watched:
        state.session.info[_CHANGED_ALL] = True


@event.listens_for(Session, "after_commit")
def _invalidate_changed_keys(session: Session) -> None:
    ids: set[str] | None = session.info.pop(_CHANGED, None)
    every = session.info.pop(_CHANGED_ALL, False)
    if ids or every:
        cache = current_read_cache()
        if cache is not None:
            if every:
                cache.invalidate_all()
            else:
                cache.invalidate(ids or ())


@event.listens_for(Session, "after_soft_rollback")
def _forget_changed_keys(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_CHANGED, None)
        session.info.pop(_CHANGED_ALL, None)


# On the hot path, Flask's globals are read through ``_get_current_object()``: an attribute of
# the proxy itself (``g.x``) first fails as the proxy's own attribute, and the AttributeError
# that Python makes for it costs more than the lookup.


def prefetch(key: str) -> None:
    """This request will read ``key``: fetch it along with the caller's own entry."""
    g._get_current_object().setdefault("cache_wanted", []).append(key)


def _wanted_keys() -> tuple[list[str], dict[str, tuple[CachedEntry | None, object]]]:
    """The keys ``prefetch`` asked for, and where to put what is found for them."""
    if not has_request_context():
        return [], {}
    ctx = g._get_current_object()
    wanted: list[str] = ctx.pop("cache_wanted", [])
    prefetched: dict[str, tuple[CachedEntry | None, object]] = {}
    ctx.cache_prefetched = prefetched
    return wanted, prefetched


def _take_prefetched(key: str) -> tuple[CachedEntry | None, object] | None:
    if not has_request_context():
        return None
    prefetched: dict[str, tuple[CachedEntry | None, object]] = g._get_current_object().get(
        "cache_prefetched", {}
    )
    return prefetched.pop(key, None)


def current_read_cache() -> ReadCache | None:
    if not has_app_context():
        return None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cache: ReadCache | None = app.extensions.get("read_cache")
    return cache
