"""GET /v1/assets: filters, sorts, keyset paging and the 400/403/422 answers
(CONTRACT.md §1, §4)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from typing import Any

import pytest
from sqlalchemy import delete, update

from app.assets.models import Asset
from app.extensions import db
from app.jobs.models import Job
from tests.helpers import problem


def register(api: Any, name: str, version: str = "1.0.0", **fields: Any) -> str:
    doc = {"asset_type": "model", "name": name, "version": version, **fields}
    response = api.post("/v1/assets", json=doc)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]  # type: ignore[no-any-return]


def set_columns(asset_id: str, **values: Any) -> None:
    """Change stored columns directly (what the pipeline or time would do)."""
    db.session.execute(update(Asset).where(Asset.id == asset_id).values(**values))
    db.session.commit()


def at(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day, hours=hour)


def listing(api: Any, **query: Any) -> dict[str, Any]:
    response = api.get("/v1/assets", query_string=query)
    assert response.status_code == 200, response.get_json()
    doc: dict[str, Any] = response.get_json()
    assert set(doc) == {"items", "total", "limit", "next_cursor"}
    return doc


def ids(api: Any, **query: Any) -> list[str]:
    return [item["id"] for item in listing(api, **query)["items"]]


def all_pages(api: Any, **query: Any) -> list[str]:
    """Every id of a list, following next_cursor; checks total on each page."""
    seen: list[str] = []
    cursor = None
    total = None
    for _ in range(100):
        doc = listing(api, **query, **({"cursor": cursor} if cursor else {}))
        assert len(doc["items"]) <= doc["limit"]
        total = doc["total"] if total is None else total
        assert doc["total"] == total
        seen.extend(item["id"] for item in doc["items"])
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert total == len(seen)
    return seen


# ---- shape and defaults ----------------------------------------------------------------------


def test_empty_list(viewer):
    assert listing(viewer) == {"items": [], "total": 0, "limit": 50, "next_cursor": None}


def test_default_order_is_created_at_desc_then_id_desc(dev):
    a, b, c, d = (register(dev, f"m{i}") for i in range(4))
    set_columns(a, created_at=at(1))
    set_columns(b, created_at=at(3))
    set_columns(c, created_at=at(2))
    set_columns(d, created_at=at(2))
    tie = sorted([c, d], reverse=True)
    assert ids(dev) == [b, *tie, a]


def test_every_status_but_deleted_is_listed(dev):
    statuses = ["pending", "validating", "active", "rejected", "deprecated", "archived"]
    made = {}
    for i, status in enumerate(statuses):
        made[status] = register(dev, f"s{i}")
        set_columns(made[status], status=status)
    gone = register(dev, "gone")
    assert dev.delete(f"/v1/assets/{gone}").status_code == 204
    assert sorted(ids(dev)) == sorted(made.values())


# ---- filters ---------------------------------------------------------------------------------


def test_filter_asset_type(dev):
    model = register(dev, "m")
    dataset = register(dev, "d", asset_type="dataset")
    assert ids(dev, asset_type="dataset") == [dataset]
    assert ids(dev, asset_type="model") == [model]
    assert ids(dev, asset_type="pipeline") == []


def test_filter_name_is_exact(dev):
    one = register(dev, "org/llm")
    two = register(dev, "org/llm", "2.0.0")
    register(dev, "org/llm-large")
    assert sorted(ids(dev, name="org/llm")) == sorted([one, two])
    assert ids(dev, name="org") == []


def test_filter_tags_all_must_match(dev):
    both = register(dev, "both", tags=["chat", "en"])
    chat = register(dev, "chat", tags=["chat"])
    register(dev, "en", tags=["en", "fr"])
    register(dev, "none")
    assert ids(dev, tag=["chat", "en"]) == [both]
    assert sorted(ids(dev, tag="chat")) == sorted([both, chat])
    assert ids(dev, tag=["chat", "fr"]) == []
    assert listing(dev, tag=["chat", "en"])["total"] == 1


def test_filter_status(dev):
    active = register(dev, "a")
    pending = register(dev, "p")
    set_columns(active, status="active")
    assert ids(dev, status="active") == [active]
    assert ids(dev, status="pending") == [pending]
    assert ids(dev, status="archived") == []


def test_filter_compliance(dev):
    unknown = register(dev, "u")
    compliant = register(dev, "c")
    set_columns(compliant, compliance_status="compliant")
    assert ids(dev, compliance="unknown") == [unknown]
    assert ids(dev, compliance="compliant") == [compliant]
    assert ids(dev, compliance="non_compliant") == []


def test_filter_author_matches_provenance_author_or_registering_user(dev, as_role):
    by_alice = register(dev, "a", provenance={"author": "alice"})
    by_dev = register(dev, "b")
    by_user = register(as_role("user"), "c")
    assert ids(dev, author="alice") == [by_alice]
    assert sorted(ids(dev, author="developer-1")) == sorted([by_alice, by_dev])
    assert ids(dev, author="user-1") == [by_user]
    assert ids(dev, author="bob") == []


def test_filter_q_is_case_insensitive_over_name_and_description(dev):
    by_name = register(dev, "org/llama-chat")
    by_description = register(dev, "other", description="A LLaMA fine-tune")
    register(dev, "unrelated", description="vision model")
    assert sorted(ids(dev, q="LLAMA")) == sorted([by_name, by_description])
    assert ids(dev, q="fine-TUNE") == [by_description]
    assert ids(dev, q="zzz") == []


def test_filter_q_takes_like_wildcards_literally(dev):
    underscore = register(dev, "a_b")
    register(dev, "axb")
    percent = register(dev, "p1", description="100% open")
    register(dev, "p2", description="100 open")
    backslash = register(dev, "p3", description="C:\\weights")
    assert ids(dev, q="a_b") == [underscore]
    assert ids(dev, q="100%") == [percent]
    assert ids(dev, q="%") == [percent]
    assert ids(dev, q="\\w") == [backslash]


def test_filter_created_after_and_before(dev):
    early, middle, late = (register(dev, n) for n in ("early", "middle", "late"))
    set_columns(early, created_at=at(0))
    set_columns(middle, created_at=at(100))
    set_columns(late, created_at=at(200))
    assert ids(dev, created_after="2024-02-01T00:00:00Z") == [late, middle]
    assert ids(dev, created_before="2024-02-01T00:00:00Z") == [early]
    both = {"created_after": "2024-01-02T00:00:00Z", "created_before": "2024-06-01T00:00:00Z"}
    assert ids(dev, **both) == [middle]
    # an offset is honoured: 2024-04-10T01:00+02:00 is 2024-04-09T23:00Z, before middle
    assert ids(dev, created_before="2024-04-10T01:00:00+02:00") == [early]


def test_filters_combine(dev):
    hit = register(dev, "hit", tags=["chat"], description="llama")
    register(dev, "miss1", tags=["chat"], description="mistral")
    register(dev, "miss2", asset_type="dataset", tags=["chat"], description="llama")
    assert ids(dev, tag="chat", q="llama", asset_type="model") == [hit]


# ---- sorting ---------------------------------------------------------------------------------


def test_sort_by_name_defaults_to_ascending(dev):
    made = {name: register(dev, name) for name in ("beta", "alpha", "org/zeta", "gamma")}
    expected = [made[n] for n in sorted(made)]
    assert ids(dev, sort="name") == expected
    assert ids(dev, sort="name", order="desc") == expected[::-1]


def test_sort_by_created_at_ascending(dev):
    a, b, c = (register(dev, n) for n in "abc")
    set_columns(a, created_at=at(5))
    set_columns(b, created_at=at(1))
    set_columns(c, created_at=at(3))
    assert ids(dev, sort="created_at", order="asc") == [b, c, a]


def test_sort_by_updated_at(dev):
    a, b, c = (register(dev, n) for n in "abc")
    set_columns(a, updated_at=at(2))
    set_columns(b, updated_at=at(9))
    set_columns(c, updated_at=at(4))
    assert ids(dev, sort="updated_at") == [b, c, a]
    assert ids(dev, sort="updated_at", order="asc") == [a, c, b]


SEMVER_ORDER = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0", "1.2.0", "1.10.0"]


def test_sort_by_version_is_semver_order(dev):
    versions = SEMVER_ORDER[:]
    random.Random(7).shuffle(versions)
    made = {v: register(dev, "m", v) for v in versions}
    expected = [made[v] for v in SEMVER_ORDER]
    assert ids(dev, sort="version", order="asc") == expected
    assert ids(dev, sort="version", order="desc") == expected[::-1]
    assert ids(dev, sort="version") == expected[::-1]  # default desc
    assert all_pages(dev, sort="version", order="asc", limit=4) == expected


def test_sort_by_size_bytes_puts_missing_sizes_last_both_ways(dev):
    sizes = {"a": 10, "b": None, "c": 5, "d": None, "e": 2**40, "f": 0}
    made = {n: register(dev, n, size_bytes=s) for n, s in sizes.items()}
    nulls = sorted([made["b"], made["d"]])
    asc = [made[n] for n in ("f", "c", "a", "e")]
    assert ids(dev, sort="size_bytes", order="asc") == asc + nulls
    assert ids(dev, sort="size_bytes", order="desc") == asc[::-1] + nulls[::-1]
    assert all_pages(dev, sort="size_bytes", order="asc", limit=1) == asc + nulls
    assert all_pages(dev, sort="size_bytes", order="desc", limit=2) == asc[::-1] + nulls[::-1]


# ---- keyset paging ---------------------------------------------------------------------------


def test_paging_23_assets_by_5(dev):
    made = [register(dev, f"m{i:02d}", size_bytes=None if i % 3 else i) for i in range(23)]
    pages = []
    cursor = None
    while True:
        doc = listing(dev, limit=5, **({"cursor": cursor} if cursor else {}))
        assert doc["total"] == 23 and doc["limit"] == 5
        pages.append([item["id"] for item in doc["items"]])
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    seen = [i for p in pages for i in p]
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(made)


@pytest.mark.parametrize("sort", ["created_at", "updated_at", "name", "version", "size_bytes"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_never_repeats_or_skips_with_ties(dev, sort, order):
    made = []
    for i in range(9):
        asset_id = register(dev, f"n{i % 3}", f"1.{i // 3}.0", size_bytes=[None, 7, 3][i % 3])
        # equal timestamps in groups of three: ties are broken by id
        set_columns(asset_id, created_at=at(i // 3), updated_at=at(i % 3))
        made.append(asset_id)
    one_page = ids(dev, sort=sort, order=order, limit=500)
    paged = all_pages(dev, sort=sort, order=order, limit=2)
    assert paged == one_page
    assert sorted(paged) == sorted(made)


def test_cursor_survives_tags_listed_in_another_order(dev):
    both = [register(dev, f"t{i}", tags=["x", "y"]) for i in range(3)]
    cursor = listing(dev, tag=["x", "y"], limit=1)["next_cursor"]
    rest = listing(dev, tag=["y", "x"], limit=5, cursor=cursor)["items"]
    assert len(rest) == 2 and {i["id"] for i in rest} < set(both)


def test_paging_with_a_filter_keeps_the_filter(dev):
    tagged = [register(dev, f"t{i}", tags=["x"]) for i in range(5)]
    for i in range(4):
        register(dev, f"u{i}")
    assert sorted(all_pages(dev, tag="x", limit=2)) == sorted(tagged)


def test_cursor_reused_with_another_sort_order_or_filter_is_400(dev):
    for i in range(3):
        register(dev, f"m{i}", tags=["x"])
    cursor = listing(dev, limit=1)["next_cursor"]
    assert cursor
    assert listing(dev, limit=1, cursor=cursor)["items"]  # same list: fine
    assert listing(dev, limit=2, cursor=cursor)["items"]  # the page size may change
    for other in ({"sort": "name"}, {"order": "asc"}, {"tag": "x"}, {"status": "pending"}):
        response = dev.get("/v1/assets", query_string={"limit": 1, "cursor": cursor, **other})
        problem(response, 400, "INVALID_INPUT")


@pytest.mark.parametrize(
    "cursor", ["garbage", "eyJmIjoxfQ", "W10", "bnVsbA", "eyJmIjoiYSIsInYiOlsxLDJdfQ", "!!!"]
)
def test_garbage_cursor_is_400(dev, cursor):
    register(dev, "m")
    problem(dev.get("/v1/assets", query_string={"cursor": cursor}), 400, "INVALID_INPUT")


def test_cursor_of_another_list_is_400(dev):
    register(dev, "m", "1.0.0")
    register(dev, "m", "2.0.0")
    cursor = dev.get("/v1/assets/m/versions?limit=1").get_json()["next_cursor"]
    assert cursor
    problem(dev.get("/v1/assets", query_string={"cursor": cursor}), 400, "INVALID_INPUT")


# ---- bad queries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"sort": "size"}, "sort"),
        ({"order": "up"}, "order"),
        ({"colour": "blue"}, "colour"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2024-13-01T00:00:00Z"}, "created_before"),
        ({"asset_type": "checkpoint"}, "asset_type"),
        ({"status": "deleted"}, "status"),
        ({"compliance": "fine"}, "compliance"),
        ({"include_deleted": "maybe"}, "include_deleted"),
    ],
)
def test_bad_query_values_are_422(viewer, query, field):
    doc = problem(viewer.get("/v1/assets", query_string=query), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == [field]


def test_limit_bounds_are_inclusive(dev):
    register(dev, "m")
    assert listing(dev, limit=1)["limit"] == 1
    assert listing(dev, limit=500)["limit"] == 500


def test_anonymous_list_is_401(client):
    problem(client.get("/v1/assets"), 401, "UNAUTHORIZED")


# ---- deleted assets --------------------------------------------------------------------------


def test_include_deleted_is_forbidden_for_non_admins(dev, viewer):
    problem(dev.get("/v1/assets?include_deleted=true"), 403, "FORBIDDEN")
    problem(viewer.get("/v1/assets?include_deleted=true"), 403, "FORBIDDEN")


def test_admin_include_deleted_lists_deleted_assets(dev, admin):
    kept = register(dev, "kept")
    gone = register(dev, "gone")
    assert dev.delete(f"/v1/assets/{gone}").status_code == 204
    assert ids(admin) == [kept]
    items = listing(admin, include_deleted="true")["items"]
    assert sorted(i["id"] for i in items) == sorted([kept, gone])
    by_id = {i["id"]: i for i in items}
    assert by_id[gone]["deleted_at"] is not None
    assert by_id[kept]["deleted_at"] is None
    assert listing(admin, include_deleted="false")["total"] == 1


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, "a\u0000b", 1.5])
def test_tampered_cursor_values_are_400_not_500(dev, value):
    for i in range(3):
        register(dev, f"m{i}", size_bytes=i)
    cursor = listing(dev, sort="size_bytes", limit=1)["next_cursor"]
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    payload["v"][0 if isinstance(value, int) else 1] = value
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    response = dev.get("/v1/assets", query_string={"sort": "size_bytes", "cursor": forged})
    problem(response, 400, "INVALID_INPUT")


# ---- totals ----------------------------------------------------------------------------------


def _totals_match_the_rows(api: Any) -> None:
    """Every list the live counts answer (by type, status or compliance, or none) and one they
    do not (status and compliance) report as total exactly the items they page through
    (all_pages checks total against what it saw)."""
    for asset_type in (None, "model", "dataset"):
        for field, value in (
            (None, None),
            *(("status", v) for v in ("pending", "active", "deprecated")),
            *(("compliance", v) for v in ("unknown", "compliant", "warning")),
        ):
            query = {k: v for k, v in (("asset_type", asset_type), (field, value)) if k and v}
            all_pages(api, limit=4, **query)
    all_pages(api, limit=4, status="active", compliance="compliant")


def test_totals_from_the_live_counts_follow_every_change(dev, admin):
    from app.stats.service import fold_deltas

    made = [register(dev, f"t{i}", asset_type=("model", "dataset")[i % 2]) for i in range(9)]
    _totals_match_the_rows(dev)
    set_columns(made[0], status="active")
    set_columns(made[1], status="active")
    set_columns(made[2], status="active", asset_type="dataset", compliance_status="compliant")
    set_columns(made[5], compliance_status="warning")
    set_columns(made[1], compliance_status="compliant")
    _totals_match_the_rows(dev)
    assert dev.patch(f"/v1/assets/{made[0]}", json={"status": "deprecated"}).status_code == 200
    assert dev.delete(f"/v1/assets/{made[3]}").status_code == 204
    assert dev.delete(f"/v1/assets/{made[1]}").status_code == 204
    _totals_match_the_rows(dev)
    fold_deltas(db.session)
    _totals_match_the_rows(dev)
    set_columns(made[3], deleted_at=None)  # what an operator's undelete would do
    # A hard delete, as a purge would do (its job's steps go with the job).
    db.session.execute(delete(Job).where(Job.asset_id == made[4]))
    db.session.execute(delete(Asset).where(Asset.id == made[4]))
    db.session.commit()
    _totals_match_the_rows(dev)
    assert listing(dev, status="active")["total"] == 1
    assert listing(dev, compliance="compliant")["total"] == 1  # made[1] is deleted
    assert listing(dev)["total"] == 7
    assert listing(admin, include_deleted="true")["total"] == 8


def test_totals_of_a_list_by_one_tag_leave_out_deleted_assets_and_follow_tag_changes(dev, admin):
    # More matches than a page holds, so that the total is counted rather than seen.
    tagged = [register(dev, f"x{i}", tags=["x", "y"] if i % 2 else ["x"]) for i in range(6)]
    register(dev, "other", tags=["y"])
    assert listing(dev, tag="x", limit=2)["total"] == 6
    assert dev.delete(f"/v1/assets/{tagged[0]}").status_code == 204
    assert dev.delete(f"/v1/assets/{tagged[1]}").status_code == 204
    assert dev.patch(f"/v1/assets/{tagged[2]}", json={"tags": ["z"]}).status_code == 200
    assert dev.patch(f"/v1/assets/{tagged[4]}", json={"tags": ["y", "x"]}).status_code == 200
    assert sorted(all_pages(dev, tag="x", limit=2)) == sorted(tagged[3:])
    assert listing(dev, tag="x", limit=2)["total"] == 3
    assert listing(dev, tag="y", limit=2)["total"] == 4  # tagged[3], [4], [5] and other
    assert listing(dev, tag=["x", "x"], limit=2)["total"] == 3
    assert listing(admin, tag="x", limit=2, include_deleted="true")["total"] == 5
    assert sorted(all_pages(admin, tag="x", limit=2, include_deleted="true")) == sorted(
        tagged[:2] + tagged[3:]
    )
    set_columns(tagged[0], deleted_at=None)  # what an operator's undelete would do
    assert listing(dev, tag="x", limit=2)["total"] == 4
    assert listing(dev, tag="absent", limit=2)["total"] == 0
