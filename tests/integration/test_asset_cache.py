"""The read-through cache of ``GET /v1/assets/{id}`` (app/cache.py): what a reader sees when
another process changes the asset, when a change races a miss, and when Redis is away.

Across processes with Redis and real workers: ``test_pipeline.py``
(``test_single_asset_reads_come_from_redis_and_follow_every_change``).
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from flask import Flask
from redis.connection import AbstractConnection

import app.cache as cache_module
from app.auth.revocation import RedisRevocationStore
from app.cache import (
    CachedEntry,
    ReadCache,
    RedisReadCache,
    SqliteMemoryReadCache,
    TrackedReader,
    asset_key,
)
from app.metrics import CACHE_OPERATIONS
from tests.conftest import PASSWORD, Api, _migrated_app, login, make_settings
from tests.helpers import set_status
from tests.integration.pipeline_support import REDIS_BASE_URL

CLOSED = "127.0.0.1:9"  # nothing listens on the discard port here


def _count(operation: str, result: str) -> float:
    value: float = CACHE_OPERATIONS.labels(operation, result)._value.get()
    return value


def _model(name: str) -> dict[str, Any]:
    return {"asset_type": "model", "name": name, "version": "1.0.0"}


def _register(api: Api) -> str:
    response = api.post("/v1/assets", json=_model(f"cache-{uuid.uuid4().hex[:8]}"))
    assert response.status_code == 202, response.get_json()
    asset_id: str = response.get_json()["id"]
    return asset_id


# ---- the generation guard: a change between a miss and its store wins -------------------------


@pytest.fixture
def redis_cache() -> Iterator[RedisReadCache]:
    cache = RedisReadCache(f"{REDIS_BASE_URL}/0")
    yield cache
    cache.close()


def _cached(cache: RedisReadCache, etag: str = '"e"') -> str:
    """A new asset id whose entry ``cache`` stored and has read back (so holds, when tracked)."""
    asset_id = f"test-{uuid.uuid4().hex}"
    _, token = cache.lookup(asset_id)
    cache.store(asset_id, token, CachedEntry(etag, b"{}"))
    assert cache.lookup(asset_id)[0] is not None
    return asset_id


def test_redis_a_store_after_a_change_is_dropped(redis_cache: RedisReadCache) -> None:
    asset_id = f"test-{uuid.uuid4().hex}"
    entry, token = redis_cache.lookup(asset_id)
    assert entry is None
    redis_cache.invalidate([asset_id])  # a change commits while the reader reads the database
    redis_cache.store(asset_id, token, CachedEntry('"old"', b'{"status": "pending"}'))
    assert redis_cache.lookup(asset_id)[0] is None  # the old answer did not get in

    entry, token = redis_cache.lookup(asset_id)
    redis_cache.store(asset_id, token, CachedEntry('"new"', b'{"status": "active"}'))
    hit, _ = redis_cache.lookup(asset_id)
    assert hit is not None and (hit.etag, hit.body) == ('"new"', b'{"status": "active"}')

    redis_cache.invalidate([asset_id])
    assert redis_cache.lookup(asset_id)[0] is None


def test_redis_invalidate_all_forgets_every_entry(redis_cache: RedisReadCache) -> None:
    ids = [f"test-{uuid.uuid4().hex}" for _ in range(3)]
    for asset_id in ids:
        _, token = redis_cache.lookup(asset_id)
        redis_cache.store(asset_id, token, CachedEntry('"e"', b"{}"))
        assert redis_cache.lookup(asset_id)[0] is not None
    _, token = redis_cache.lookup("test-racing-reader")
    redis_cache.invalidate_all()
    assert all(redis_cache.lookup(asset_id)[0] is None for asset_id in ids)
    redis_cache.store("test-racing-reader", token, CachedEntry('"e"', b"{}"))
    assert redis_cache.lookup("test-racing-reader")[0] is None


def test_redis_a_dropped_connection_is_replaced_without_a_miss(
    redis_cache: RedisReadCache,
) -> None:
    # Redis restarted, a proxy timed the connection out: the next read reconnects and is
    # answered, rather than counted as an error and the cache left alone for seconds.
    asset_id = _cached(redis_cache)
    reading = redis_cache._reader.tracked.connection  # the connection the hot path reads on
    host, port = reading._sock.getsockname()[:2]
    admin = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    try:
        assert admin.client_kill(f"{host}:{port}")
    finally:
        admin.close()
    errors = _count("get", "error")

    hit, _ = redis_cache.lookup(asset_id)

    assert hit is not None and hit.etag == '"e"'
    assert _count("get", "error") == errors


def _seen_within(check: Any, seconds: float = 2.0) -> float:
    """How long until ``check()`` held (it must within ``seconds``): a change another process
    makes reaches a tracked reader with Redis's invalidation notice, not with the write's reply."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "the change was never seen"
        time.sleep(0.001)
    return time.monotonic() - started


def test_redis_a_repeat_read_is_answered_without_redis_until_another_process_changes_it(
    redis_cache: RedisReadCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset_id = f"test-{uuid.uuid4().hex}"
    _, token = redis_cache.lookup(asset_id)
    redis_cache.store(asset_id, token, CachedEntry('"e1"', b"{}"))
    assert redis_cache.lookup(asset_id)[0] is not None  # read (and tracked) once more
    sent = _redis_commands(monkeypatch)
    for _ in range(3):
        hit, _ = redis_cache.lookup(asset_id)
        assert hit is not None and hit.etag == '"e1"'
    assert sent == []

    # Another process (a plain client here, which tells this one nothing) invalidates it.
    other = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    try:
        entry_key, generation_key, _epoch = redis_cache._keys(asset_id)
        other.incr(generation_key)
        other.delete(entry_key)
        waited = _seen_within(lambda: redis_cache.lookup(asset_id)[0] is None)
        # A key read while it did not exist is tracked too: its creation is noticed.
        marker = f"test-marker-{uuid.uuid4().hex}"
        assert redis_cache._mget([marker]) == [None]
        other.set(marker, b"1")
        waited = max(waited, _seen_within(lambda: redis_cache._mget([marker]) == [b"1"]))
    finally:
        other.close()
    assert waited < 0.5


def test_redis_a_change_this_process_makes_is_read_back_at_once(
    redis_cache: RedisReadCache,
) -> None:
    asset_id = _cached(redis_cache, '"e1"')
    # Another cache object of this process (another app; the API's other threads alike).
    writer = RedisReadCache(f"{REDIS_BASE_URL}/0")
    try:
        writer.invalidate([asset_id])
        # Forgotten already: the reader had not read Redis's notice (it reads them on reads).
        held = redis_cache._reader.tracked.values
        assert not {redis_cache._keys(asset_id)[0], redis_cache._keys(asset_id)[1]} & set(held)
        assert redis_cache.lookup(asset_id)[0] is None
        _, token = redis_cache.lookup(asset_id)
        writer.store(asset_id, token, CachedEntry('"e2"', b"{}"))
        hit, _ = redis_cache.lookup(asset_id)
        assert hit is not None and hit.etag == '"e2"'
    finally:
        writer.close()


def test_redis_a_connection_gone_silent_is_not_trusted_past_a_second(
    redis_cache: RedisReadCache,
) -> None:
    """A connection that died without a word (a NAT dropping it) brings no notices: after a
    second of silence the reader asks Redis first, times out, and reads on a new connection."""
    asset_id = _cached(redis_cache)
    reader = redis_cache._reader.tracked
    with socket.create_server(("127.0.0.1", 0)) as silent:
        mute = socket.create_connection(silent.getsockname())
        mute.settimeout(real_timeout := reader.connection.socket_timeout)
        assert real_timeout is not None and real_timeout <= 1
        real = reader.connection._sock
        reader.connection._sock = reader.socket = mute  # the hiredis parser reads this socket
        reader.connection._parser._sock = mute
        real.close()  # its notices are lost with it
        other = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
        try:
            other.delete(redis_cache._keys(asset_id)[0])  # another process changes it
        finally:
            other.close()
        errors = _count("get", "error")
        time.sleep(cache_module.TRACKED_SILENCE_SECONDS + 0.1)
        assert redis_cache.lookup(asset_id)[0] is None  # asked, timed out, read again
        assert _count("get", "error") == errors
        mute.close()


def test_redis_a_burst_of_notices_before_a_reply_is_read_one_by_one(
    redis_cache: RedisReadCache,
) -> None:
    prefix = f"test-burst-{uuid.uuid4().hex}:"
    keys = [f"{prefix}{n}" for n in range(3000)]
    reader = TrackedReader(redis_cache.client.connection_pool)
    other = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    try:
        assert reader.mget(keys) == [None] * len(keys)
        other.mset(dict.fromkeys(keys, b"1"))  # 3,000 notices, queued before the next reply
        time.sleep(0.2)
        assert reader._call("MGET", keys[0]) == [b"1"]  # redis-py would recurse 3,000 deep
        assert not set(keys) & set(reader.values)
    finally:
        other.delete(*keys)
        other.close()
        reader.close()


def test_redis_a_reader_holds_at_most_its_byte_budget(
    redis_cache: RedisReadCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "TRACKED_MAX_BYTES", 10_000)
    prefix = f"test-budget-{uuid.uuid4().hex}:"
    other = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    reader = TrackedReader(redis_cache.client.connection_pool)
    try:
        other.mset({f"{prefix}{n}": b"x" * 1000 for n in range(40)})
        for n in range(40):
            assert reader.mget([f"{prefix}{n}"]) == [b"x" * 1000]
            assert reader.size <= 10_000 + 1100
            assert len(reader.values) <= 11
    finally:
        other.delete(*(f"{prefix}{n}" for n in range(40)))
        other.close()
        reader.close()


def test_redis_a_flush_forgets_every_tracked_value() -> None:
    cache = RedisReadCache(f"{REDIS_BASE_URL}/13")
    other = redis.Redis.from_url(f"{REDIS_BASE_URL}/13")
    try:
        asset_id = _cached(cache)
        other.flushdb()
        _seen_within(lambda: cache.lookup(asset_id)[0] is None)
    finally:
        other.close()
        cache.close()


def test_memory_a_store_after_a_change_is_dropped(tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    sqlite3.connect(database).close()
    cache = SqliteMemoryReadCache(str(database))
    try:
        _, token = cache.lookup("a1")
        cache.invalidate(["a1"])
        cache.store("a1", token, CachedEntry('"old"', b"{}"))
        assert cache.lookup("a1")[0] is None

        _, token = cache.lookup("a1")
        cache.store("a1", token, CachedEntry('"new"', b"{}"))
        assert cache.lookup("a1")[0] is not None
        # Another connection (another process) commits: everything is forgotten.
        other = sqlite3.connect(database)
        other.execute("CREATE TABLE IF NOT EXISTS t (x)")
        other.execute("INSERT INTO t VALUES (1)")
        other.commit()
        other.close()
        assert cache.lookup("a1")[0] is None
    finally:
        cache.close()


# ---- the embedded default: an in-process cache that another process's commit empties ----------


@pytest.fixture
def committing_sqlite_app(tmp_path: Path) -> Iterator[Flask]:
    """An embedded-default app whose commits are real (not the rolled-back test transaction)."""
    from app.extensions import db
    from app.users.service import create_user

    app = _migrated_app(make_settings(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path))
    with app.app_context():
        for role in ("viewer", "developer"):
            create_user(f"{role}-1", PASSWORD, [role])
        db.session.remove()
    yield app
    with app.app_context():
        db.engine.dispose()


def test_embedded_cache_sees_a_change_made_by_another_process(
    committing_sqlite_app: Flask, tmp_path: Path
) -> None:
    cache = committing_sqlite_app.extensions["read_cache"]
    assert isinstance(cache, SqliteMemoryReadCache)
    client = committing_sqlite_app.test_client()
    asset_id = _register(login(client, "developer-1"))
    viewer = login(client, "viewer-1")

    hits = _count("get", "hit")
    first = viewer.get(f"/v1/assets/{asset_id}")
    second = viewer.get(f"/v1/assets/{asset_id}")
    assert first.status_code == second.status_code == 200
    assert first.get_json()["status"] == "pending" and second.data == first.data
    assert _count("get", "hit") == hits + 2  # the second read: the caller's entry and the asset's

    # What the worker process does when it validates the asset, through a connection of its own.
    worker = sqlite3.connect(tmp_path / "registry.db")
    worker.execute(
        "UPDATE assets SET status = 'active', row_version = row_version + 1 WHERE id = ?",
        (asset_id,),
    )
    worker.commit()
    worker.close()

    after = viewer.get(f"/v1/assets/{asset_id}")
    assert after.get_json()["status"] == "active"
    assert after.headers["ETag"] != first.headers["ETag"]


def test_a_bulk_update_through_the_orm_invalidates(app: Flask, dev: Api, viewer: Api) -> None:
    """``UPDATE assets ...`` through the ORM (whose rows the session does not know)."""
    asset_id = _register(dev)
    assert viewer.get(f"/v1/assets/{asset_id}").get_json()["status"] == "pending"
    assert viewer.get(f"/v1/assets/{asset_id}").get_json()["status"] == "pending"
    set_status(asset_id, "active")
    assert viewer.get(f"/v1/assets/{asset_id}").get_json()["status"] == "active"


def test_include_deleted_reads_bypass_the_cache(app: Flask, dev: Api, admin: Api) -> None:
    asset_id = _register(dev)
    assert admin.get(f"/v1/assets/{asset_id}").status_code == 200
    assert admin.delete(f"/v1/assets/{asset_id}").status_code == 204
    assert admin.get(f"/v1/assets/{asset_id}").status_code == 404
    deleted = admin.get(f"/v1/assets/{asset_id}?include_deleted=true")
    assert deleted.status_code == 200 and deleted.get_json()["deleted_at"]


# ---- Redis away: reads go to the database -------------------------------------------------


def test_with_redis_down_reads_are_answered_from_the_database(
    app: Flask, dev: Api, viewer: Api
) -> None:
    down = RedisReadCache(f"redis://{CLOSED}/0")
    original = app.extensions["read_cache"]
    app.extensions["read_cache"] = down
    try:
        asset_id = _register(dev)
        errors = _count("get", "error")
        started = time.monotonic()
        for _ in range(20):
            response = viewer.get(f"/v1/assets/{asset_id}")
            assert response.status_code == 200 and response.get_json()["id"] == asset_id
        # One failed attempt, then the cache is left alone for a while: no timeout per request.
        assert time.monotonic() - started < 5
        assert _count("get", "error") == errors + 40  # the caller's entry and the asset's
        set_status(asset_id, "active")  # the invalidation fails too; the commit does not
        assert viewer.get(f"/v1/assets/{asset_id}").get_json()["status"] == "active"
    finally:
        app.extensions["read_cache"] = original
        down.close()


def test_the_redis_cache_is_chosen_by_redis_url(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'r.db'}", tmp_path, REDIS_URL=f"{REDIS_BASE_URL}/0"
    )
    from app import create_app

    assert isinstance(create_app(settings).extensions["read_cache"], RedisReadCache)
    postgres_without_redis = make_settings("postgresql+psycopg://postgres@127.0.0.1/x", tmp_path)
    cache = create_app(postgres_without_redis).extensions["read_cache"]
    assert type(cache) is ReadCache  # no cache a worker's commit could not reach
    assert redis.Redis.from_url(f"{REDIS_BASE_URL}/0").ping()


# ---- the callers' entries: roles, disabled and logout count at the next request -----------------


@pytest.fixture
def redis_app(tmp_path: Path) -> Iterator[Flask]:
    """A committing app whose cache and revocation state are in Redis (one round trip)."""
    from app.extensions import db
    from app.users.service import create_user

    app = _migrated_app(
        make_settings(
            f"sqlite:///{tmp_path / 'registry.db'}",
            tmp_path,
            REDIS_URL=f"{REDIS_BASE_URL}/0",
            CELERY_BROKER_URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        )
    )
    with app.app_context():
        for role in ("developer", "admin"):
            create_user(f"{role}-1", PASSWORD, [role])
        db.session.remove()
    yield app
    with app.app_context():
        db.engine.dispose()


def test_a_demotion_a_disable_and_a_logout_count_at_once(redis_app: Flask) -> None:
    assert isinstance(redis_app.extensions["read_cache"], RedisReadCache)
    client = redis_app.test_client()
    admin, dev = login(client, "admin-1"), login(client, "developer-1")
    hits = _count("get", "hit")
    for _ in range(3):
        assert dev.get("/v1/auth/me").status_code == 200
    assert _count("get", "hit") >= hits + 2  # the developer's entry, from Redis
    assert dev.post("/v1/assets", json=_model("cache-demoted")).status_code == 202

    demoted = admin.patch(f"/v1/users/{dev.user['id']}", json={"roles": ["viewer"]})
    assert demoted.status_code == 200, demoted.get_json()
    refused = dev.post("/v1/assets", json=_model("cache-demoted-2"))
    assert refused.status_code == 403 and refused.get_json()["code"] == "FORBIDDEN"
    assert dev.get("/v1/auth/me").get_json()["roles"] == ["viewer"]

    assert admin.patch(f"/v1/users/{dev.user['id']}", json={"disabled": True}).status_code == 200
    assert dev.get("/v1/auth/me").status_code == 401

    assert admin.get("/v1/auth/me").status_code == 200
    assert admin.post("/v1/auth/logout").status_code in (200, 204)
    assert admin.get("/v1/auth/me").status_code == 401


def test_a_user_entry_of_another_shape_is_read_from_the_database(redis_app: Flask) -> None:
    """An entry written by another version of the code (a rolling deploy) is not a 500: the
    user is read from the database and the request answered."""
    client = redis_app.test_client()
    dev = login(client, "developer-1")
    assert dev.get("/v1/auth/me").status_code == 200  # the entry is cached now
    cache = redis_app.extensions["read_cache"]
    key = f"{cache.prefix}user:{dev.user['id']}"
    epoch, _, _old = cache.client.get(key).partition(b"\n")
    cache.client.set(key, epoch + b"\n" + b'"etag"\n{"name": "developer-1", "groups": []}')
    me = dev.get("/v1/auth/me")
    assert me.status_code == 200, me.get_json()
    assert me.get_json()["roles"] == ["developer"]


def test_a_cached_authenticated_read_is_one_redis_round_trip_then_none(
    redis_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revocation, the caller's entry and the asset's come in one MGET: no database, no other
    Redis command; read again, they are answered from what the tracked connection holds."""
    client = redis_app.test_client()
    dev = login(client, "developer-1")
    asset_id = _register(dev)
    assert dev.get(f"/v1/assets/{asset_id}").status_code == 200  # stores the entry
    cache: RedisReadCache = redis_app.extensions["read_cache"]
    cache._reader.tracked.values.clear()  # as a process that has not read any of it yet
    sent = _redis_commands(monkeypatch)
    queries = _count_queries(redis_app)
    for _ in range(5):
        response = dev.get(f"/v1/assets/{asset_id}")
        assert response.status_code == 200 and response.get_json()["id"] == asset_id
    assert sent == ["MGET"]
    assert queries() == 0

    # A logout in another process: the token is refused once Redis's notice is here.
    family = jwt.decode(dev.token, options={"verify_signature": False})["fam"]
    other = redis.Redis.from_url(cache.url)
    try:
        other.set(RedisRevocationStore.family_key(family), 1, ex=60)
    finally:
        other.close()
    _seen_within(lambda: dev.get(f"/v1/assets/{asset_id}").status_code == 401)


def _redis_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Redis commands this process sends from now on, on every connection,
    pooled or not (a command's name is the first bulk string of the packed command)."""
    sent: list[str] = []
    original = AbstractConnection.send_packed_command

    def counting(connection: Any, command: Any, check_health: bool = True) -> None:
        data = b"".join(command) if isinstance(command, list | tuple) else bytes(command)
        sent.append(data.split(b"\r\n")[2].decode())
        original(connection, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def _count_queries(app: Flask) -> Any:
    from sqlalchemy import event

    from app.extensions import db

    with app.app_context():
        engine = db.engine
    seen: list[str] = []

    def count(*_: Any) -> None:
        seen.append("q")

    event.listen(engine, "before_cursor_execute", count)
    return lambda: len(seen)


# ---- list pages: ids from the database, documents from the cache ------------------------------


def test_a_list_page_shows_what_single_reads_show_and_follows_changes(
    app: Flask, dev: Api, viewer: Api
) -> None:
    """A page's items are the documents GET /v1/assets/{id} gives, cached or not, and a change
    shows on the next page read (on either backend's cache)."""
    name = f"cache-list-{uuid.uuid4().hex[:8]}"
    ids = []
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        response = dev.post(
            "/v1/assets",
            json={"asset_type": "model", "name": name, "version": version, "tags": ["a", "b"]},
        )
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    viewer.get(f"/v1/assets/{ids[1]}")  # one of them cached by a single read, two not
    url = f"/v1/assets?name={name}&sort=version&order=asc&limit=2"
    for _ in range(2):  # misses the first time, hits the second
        page = viewer.get(url)
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert [item["id"] for item in body["items"]] == ids[:2]
        assert body["items"] == [viewer.get(f"/v1/assets/{i}").get_json() for i in ids[:2]]
        assert body["total"] == 3 and body["limit"] == 2 and body["next_cursor"]
    rest = viewer.get(f"{url}&cursor={body['next_cursor']}").get_json()
    assert [item["id"] for item in rest["items"]] == [ids[2]] and rest["next_cursor"] is None

    patched = dev.patch(f"/v1/assets/{ids[0]}", json={"description": "changed"})
    assert patched.status_code == 200, patched.get_json()
    set_status(ids[1], "active")
    items = viewer.get(url).get_json()["items"]
    assert items[0]["description"] == "changed"
    assert items[1]["status"] == "active"
    assert dev.delete(f"/v1/assets/{ids[0]}").status_code == 204
    assert [item["id"] for item in viewer.get(url).get_json()["items"]] == ids[1:]


def test_a_cached_list_page_reads_its_documents_in_one_redis_round_trip(
    redis_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its items are cached, a page costs the database only its ids (and total), and Redis
    one MGET for all of its documents."""
    client = redis_app.test_client()
    dev = login(client, "developer-1")
    name = f"cache-page-{uuid.uuid4().hex[:8]}"
    for n in range(5):
        body = {"asset_type": "model", "name": name, "version": f"1.0.{n}"}
        assert dev.post("/v1/assets", json=body).status_code == 202
    url = f"/v1/assets?name={name}&limit=10"
    first = dev.get(url).get_json()
    assert len(first["items"]) == 5
    hits = _count("get", "hit")
    sent = _redis_commands(monkeypatch)
    again = dev.get(url).get_json()
    assert again == first
    assert _count("get", "hit") >= hits + 5
    # The caller's entry and revocation are held from the first read; the documents the first
    # read stored are read once more, in one MGET; then they are held too.
    assert sent == ["MGET"]  # nothing stored: all were hits
    assert dev.get(url).get_json() == first
    assert sent == ["MGET"]


def test_a_missed_read_stores_its_entry_in_one_redis_command(
    redis_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a miss, GET /v1/assets/{id} stores the entry with one conditional command (no
    SCRIPT EXISTS first, as a pipeline of scripts would send)."""
    client = redis_app.test_client()
    dev = login(client, "developer-1")
    asset_id = _register(dev)
    assert dev.get(f"/v1/assets/{asset_id}").status_code == 200  # the script is loaded now
    redis_app.extensions["read_cache"].invalidate([asset_key(asset_id)])
    sent = _redis_commands(monkeypatch)
    stores = _count("set", "ok")
    assert dev.get(f"/v1/assets/{asset_id}").get_json()["id"] == asset_id
    assert _count("set", "ok") == stores + 1
    assert sent == ["MGET", "EVALSHA"], sent
