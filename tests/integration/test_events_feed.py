"""GET /v1/events: the outbox read back as CloudEvents, oldest first, paged with ``after``;
feed order is commit order, so a poller never skips an event (CONTRACT.md §1, §7)."""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.db import new_id
from app.events.service import record_event
from app.extensions import db
from tests.conftest import Api, committing_pg_app, login
from tests.helpers import problem, set_status

pytestmark = pytest.mark.integration

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
RFC3339_UTC_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SEQUENCE_RE = re.compile(r"^\d{20}$")


def register(api: Api, name: str, version: str = "1.0.0", **kw: Any) -> dict[str, Any]:
    """Register a model version through the API; returns the 202 body."""
    body = {"asset_type": "model", "name": name, "version": version}
    response = api.post("/v1/assets", json=body, **kw)
    assert response.status_code == 202, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def feed(api: Api, **params: Any) -> dict[str, Any]:
    """One page of ``GET /v1/events`` with ``params``; asserts a 200."""
    response = api.get("/v1/events", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def read_all(api: Api, **params: Any) -> list[dict[str, Any]]:
    """Every page of the feed, following ``next_cursor`` as ``after``."""
    items: list[dict[str, Any]] = []
    page = feed(api, limit=500, **params)
    items += page["items"]
    while page["next_cursor"] is not None:
        page = feed(api, limit=500, **{**params, "after": page["next_cursor"]})
        items += page["items"]
    return items


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def markers(items: list[dict[str, Any]]) -> list[Any]:
    return [item["data"].get("n") for item in items]


def record(session: Any, asset_id: str | None, *names: str) -> None:
    """Record one ``asset_updated`` event per name, with ``data == {"n": name}``."""
    for name in names:
        record_event(session, "asset_updated", asset_id, {"n": name})


# ---- what one change writes ------------------------------------------------------------------


def test_register_and_patch_read_back_as_cloudevents(dev: Api) -> None:
    """A registration and a PATCH of tags and status read back as three CloudEvents."""
    asset = register(dev, "acme/llm", headers={"X-Request-ID": "req-feed-register"})
    set_status(asset["id"], "active")
    response = dev.patch(
        f"/v1/assets/{asset['id']}",
        json={"tags": ["x"], "status": "deprecated"},
        headers={"X-Request-ID": "req-feed-patch"},
    )
    assert response.status_code == 200, response.get_json()

    page = feed(dev, asset_id=asset["id"])
    items = page["items"]
    assert page["total"] == 3
    assert page["next_cursor"] is None
    assert items[0]["type"] == "asset_registered"
    assert items[0]["data"] == {
        "name": "acme/llm",
        "version": "1.0.0",
        "asset_type": "model",
        "job_id": asset["job"]["id"],
    }
    assert items[0]["requestid"] == "req-feed-register"
    # one event per concern, both written by the PATCH
    assert sorted(((i["type"], i["data"]) for i in items[1:]), key=lambda e: e[0]) == [
        ("asset_status_changed", {"from": "active", "to": "deprecated"}),
        ("asset_updated", {"fields": ["tags"]}),
    ]
    assert {item["requestid"] for item in items[1:]} == {"req-feed-patch"}
    for item in items:
        assert item["specversion"] == "1.0"
        assert ULID_RE.fullmatch(item["id"]), item["id"]
        assert item["source"]
        assert item["subject"] == asset["id"]
        assert RFC3339_UTC_RE.fullmatch(item["time"]), item["time"]
        assert item["datacontenttype"] == "application/json"
        assert isinstance(item["data"], dict)
        assert item["actor"] == dev.user["username"]
        assert SEQUENCE_RE.fullmatch(item["sequence"]), item["sequence"]
    sequences = [int(item["sequence"]) for item in items]
    assert sequences[0] < sequences[1] < sequences[2]
    assert len(set(ids(items))) == 3


# ---- paging ----------------------------------------------------------------------------------


def test_paging_with_after_and_cursor_neither_repeats_nor_skips(dev: Api) -> None:
    """Pages of 3 followed by ``next_cursor`` give exactly the one big page, in order."""
    for i in range(7):
        register(dev, f"acme/page-{i}")
    assert feed(dev)["limit"] == 50
    whole = feed(dev, limit=500)
    assert whole["total"] == 7
    assert whole["next_cursor"] is None
    assert [item["data"]["name"] for item in whole["items"]] == [f"acme/page-{i}" for i in range(7)]

    pages: list[dict[str, Any]] = [feed(dev, limit=3)]
    while pages[-1]["next_cursor"] is not None:
        # the second page is asked for with ``cursor``, the others with ``after``
        key = "cursor" if len(pages) == 1 else "after"
        pages.append(feed(dev, limit=3, **{key: pages[-1]["next_cursor"]}))
    assert [len(page["items"]) for page in pages] == [3, 3, 1]
    assert all(page["total"] == 7 and page["limit"] == 3 for page in pages)
    for page in pages[:-1]:
        assert page["next_cursor"] == page["items"][-1]["id"]
    paged = [item for page in pages for item in page["items"]]
    assert ids(paged) == ids(whole["items"])
    assert len(set(ids(paged))) == 7


def test_after_the_last_event_is_an_empty_page(dev: Api) -> None:
    """A poller that is up to date gets an empty page, then only what came since."""
    register(dev, "acme/first")
    last = feed(dev)["items"][-1]["id"]
    assert feed(dev, after=last)["items"] == []
    second = register(dev, "acme/second")
    page = feed(dev, after=last)
    assert [item["subject"] for item in page["items"]] == [second["id"]]
    assert page["next_cursor"] is None


# ---- filters and query validation ------------------------------------------------------------


def test_type_and_asset_filters(dev: Api) -> None:
    """``type`` and ``asset_id`` filter alone and together; ``total`` counts the matches."""
    one = register(dev, "acme/one")
    two = register(dev, "acme/two")
    set_status(one["id"], "active")
    for asset in (one, two):
        response = dev.patch(f"/v1/assets/{asset['id']}", json={"tags": ["t"]})
        assert response.status_code == 200, response.get_json()
    response = dev.patch(f"/v1/assets/{one['id']}", json={"status": "deprecated"})
    assert response.status_code == 200, response.get_json()

    registered = feed(dev, type="asset_registered")
    assert [i["subject"] for i in registered["items"]] == [one["id"], two["id"]]
    assert registered["total"] == 2
    assert {i["type"] for i in registered["items"]} == {"asset_registered"}

    of_one = feed(dev, asset_id=one["id"])
    assert [i["type"] for i in of_one["items"]] == [
        "asset_registered",
        "asset_updated",
        "asset_status_changed",
    ]
    assert {i["subject"] for i in of_one["items"]} == {one["id"]}

    both = feed(dev, type="asset_updated", asset_id=two["id"])
    assert [(i["type"], i["subject"]) for i in both["items"]] == [("asset_updated", two["id"])]
    assert both["total"] == 1
    assert feed(dev, type="asset_deleted")["items"] == []
    assert feed(dev, asset_id=new_id())["total"] == 0


def test_filters_and_after_combine(dev: Api) -> None:
    """``after`` may name an event the filter leaves out; paging goes on from its place."""
    one = register(dev, "acme/a")
    response = dev.patch(f"/v1/assets/{one['id']}", json={"tags": ["t"]})
    assert response.status_code == 200, response.get_json()
    two = register(dev, "acme/b")
    updated = feed(dev, type="asset_updated")["items"][0]["id"]
    page = feed(dev, type="asset_registered", after=updated)
    assert [i["subject"] for i in page["items"]] == [two["id"]]
    assert page["total"] == 2  # total counts every match, not only those after


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"type": "asset_exploded"}, "type"),
        ({"type": ""}, "type"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "x" * 27}, "after"),
    ],
)
def test_invalid_query_values_are_422(viewer: Api, query: dict[str, str], field: str) -> None:
    """A query value that is not allowed is a 422 keyed by its parameter, never clamped."""
    doc = problem(viewer.get("/v1/events", query_string=query), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == [field], doc


def test_after_naming_no_event_is_422(dev: Api) -> None:
    register(dev, "acme/known")
    doc = problem(dev.get("/v1/events", query_string={"after": new_id()}), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["after"]


def test_after_and_cursor_must_agree(dev: Api) -> None:
    """``after`` and ``cursor`` are one position: the same id twice is fine, two ids are not."""
    register(dev, "acme/x")
    register(dev, "acme/y")
    first, second = ids(feed(dev)["items"])
    same = feed(dev, after=first, cursor=first)
    assert ids(same["items"]) == [second]
    response = dev.get("/v1/events", query_string={"after": first, "cursor": second})
    doc = problem(response, 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) in (["after"], ["cursor"]), doc


def test_unknown_query_parameter_is_rejected_like_other_lists(viewer: Api) -> None:
    """An unknown parameter is a 422 keyed by its name, as on ``/v1/jobs``, not ignored."""
    for path in ("/v1/jobs", "/v1/events"):
        doc = problem(viewer.get(path, query_string={"bogus": "1"}), 422, "VALIDATION_FAILED")
        assert list(doc["errors"]) == ["bogus"], path


# ---- who may read ----------------------------------------------------------------------------


def test_no_token_is_401(client: Any) -> None:
    problem(client.get("/v1/events"), 401, "UNAUTHORIZED")


def test_viewer_may_read_the_feed(dev: Api, viewer: Api) -> None:
    asset = register(dev, "acme/seen")
    page = feed(viewer)
    assert [i["subject"] for i in page["items"]] == [asset["id"]]


# ---- transactions, on both backends ----------------------------------------------------------


def test_events_of_one_transaction_are_contiguous_and_in_record_order(app: Flask, dev: Api) -> None:
    """Three events committed together sit side by side, in the order they were recorded."""
    before = register(dev, "acme/before")
    asset_id = new_id()
    record(db.session, asset_id, "t0", "t1", "t2")
    db.session.commit()
    after = register(dev, "acme/after")
    items = read_all(dev)
    assert [i["subject"] for i in items] == [
        before["id"],
        asset_id,
        asset_id,
        asset_id,
        after["id"],
    ]
    assert markers(items[1:4]) == ["t0", "t1", "t2"]
    sequences = [int(i["sequence"]) for i in items]
    assert sequences == sorted(set(sequences))


def test_a_rolled_back_transaction_leaves_no_event(app: Flask, viewer: Api) -> None:
    asset_id = new_id()
    record(db.session, asset_id, "gone")
    db.session.rollback()
    record(db.session, asset_id, "kept")
    db.session.commit()
    assert markers(read_all(viewer)) == ["kept"]


def test_a_rolled_back_savepoint_drops_only_its_events(app: Flask, viewer: Api) -> None:
    """Events written before and after a failed savepoint land; the savepoint's do not."""
    asset_id = new_id()
    record(db.session, asset_id, "outer-1")

    def fail_in_savepoint() -> None:
        with db.session.begin_nested():
            record(db.session, asset_id, "inner")
            raise RuntimeError("undo the savepoint")

    with pytest.raises(RuntimeError):
        fail_in_savepoint()
    record(db.session, asset_id, "outer-2")
    db.session.commit()
    assert markers(read_all(viewer)) == ["outer-1", "outer-2"]


# ---- commit order on PostgreSQL, with real commits -------------------------------------------


@pytest.fixture(scope="module")
def committing_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app on its own PostgreSQL database where every transaction really commits."""
    var = tmp_path_factory.mktemp("events")
    with committing_pg_app("_events", var, "feed-reader", "viewer") as flask_app:
        yield flask_app


@pytest.fixture
def engine(committing_app: Flask) -> Iterator[Engine]:
    with committing_app.app_context():
        yield db.engine


@pytest.fixture
def reader(committing_app: Flask) -> Api:
    return login(committing_app.test_client(), "feed-reader")


def test_feed_order_is_commit_order(engine: Engine, reader: Api) -> None:
    """A transaction that inserted first but commits last comes last, and a poller that saw
    the other one first still receives it."""
    asset_id = new_id()  # this test's events only: the database is shared by the module
    with Session(engine) as session_a, Session(engine) as session_b:
        event_a = record_event(session_a, "asset_updated", asset_id, {"n": "a"})
        session_a.flush()
        time.sleep(0.002)  # a later millisecond: B's ULID sorts after A's
        event_b = record_event(session_b, "asset_updated", asset_id, {"n": "b"})
        session_b.commit()
        id_a, id_b = event_a.id, event_b.id
        assert id_a < id_b

        while_open = feed(reader, asset_id=asset_id)
        assert ids(while_open["items"]) == [id_b]
        assert while_open["total"] == 1

        session_a.commit()

    assert ids(feed(reader, asset_id=asset_id)["items"]) == [id_b, id_a]
    assert ids(feed(reader, asset_id=asset_id, after=id_b)["items"]) == [id_a]
    assert ids(feed(reader, after=id_b)["items"]) == [id_a]


def test_concurrent_commits_keep_the_feed_gapless(engine: Engine, reader: Api) -> None:
    """8 threads x 25 transactions of 1-3 events, with a poller reading all along: the feed
    holds each event once, in increasing sequence, a transaction's events side by side, and
    the poller saw exactly the final feed."""
    threads_n, transactions = 8, 25
    asset_id = new_id()
    written: list[list[str]] = []  # each committed transaction's markers, in record order
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n + 1)
    done = threading.Event()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        rng = random.Random(worker)
        try:
            barrier.wait()
            for t in range(transactions):
                names = [f"{worker}.{t}.{k}" for k in range(rng.randint(1, 3))]
                with Session(engine) as session:
                    record(session, asset_id, *names)
                    session.commit()
                with lock:
                    written.append(names)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    polled: list[dict[str, Any]] = []

    def poll() -> None:
        last: str | None = None
        try:
            barrier.wait()
            while True:
                finished = done.is_set()
                params: dict[str, Any] = {"asset_id": asset_id, "limit": 50}
                if last is not None:
                    params["after"] = last
                page = feed(reader, **params)
                polled.extend(page["items"])
                if page["items"]:
                    last = page["items"][-1]["id"]
                elif not finished:
                    time.sleep(0.005)
                # one full read after the writers stopped catches the tail
                if finished and page["next_cursor"] is None:
                    return
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(threads_n)]
    poller = threading.Thread(target=poll)
    for thread in [*writers, poller]:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    done.set()
    poller.join(timeout=120)
    assert not errors, errors
    assert len(written) == threads_n * transactions

    items = read_all(reader, asset_id=asset_id)
    expected = sum(len(names) for names in written)
    assert len(items) == expected
    assert feed(reader, asset_id=asset_id, limit=1)["total"] == expected
    assert len(set(ids(items))) == expected
    sequences = [int(i["sequence"]) for i in items]
    assert all(a < b for a, b in itertools.pairwise(sequences))
    assert sorted(markers(items)) == sorted(n for names in written for n in names)

    position = {name: i for i, name in enumerate(markers(items))}
    for names in written:
        first = position[names[0]]
        assert markers(items[first : first + len(names)]) == names

    assert ids(polled) == ids(items)


def test_events_carry_the_callers_trace(dev: Api) -> None:
    """A W3C ``traceparent`` sent with the change is continued: its trace id is on the event;
    without one, the request's own trace id is."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = dev.post(
        "/v1/assets",
        json={"asset_type": "model", "name": "acme/traced", "version": "1.0.0"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert traced.status_code == 202, traced.get_json()
    untraced = register(dev, "acme/untraced")

    (first,) = feed(dev, asset_id=traced.get_json()["id"])["items"]
    (second,) = feed(dev, asset_id=untraced["id"])["items"]

    assert first["traceid"] == trace_id
    assert re.fullmatch(r"[0-9a-f]{32}", second["traceid"])
    assert second["traceid"] != trace_id
