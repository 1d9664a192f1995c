"""Keyset cursors (app/paging.py): round trips, tampering, and paging over an in-memory table."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.errors import InvalidInputError
from app.paging import SortKey, decode_cursor, encode_cursor, fingerprint, paginate

WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


def _key(kind: str, attr: str, *, nullable: bool = False, descending: bool = False) -> SortKey:
    return SortKey(None, lambda row: getattr(row, attr), kind, descending, nullable)


KEYS = [
    _key("datetime", "when"),
    _key("bytes", "blob"),
    _key("int", "size", nullable=True),
    _key("str", "id"),
]
ROW = SimpleNamespace(when=WHEN, blob=b"\x00\x01\xff", size=2**63 - 1, id="01HZZZ")
BOUND = fingerprint({"sort": "created_at", "order": "desc"})


def raw_cursor(payload: Any) -> str:
    # the standard library, unlike orjson, writes integers beyond 64 bits
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def payload_of(token: str) -> dict[str, Any]:
    return orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))  # type: ignore[no-any-return]


def test_round_trip_keeps_every_kind_of_value():
    token = encode_cursor(KEYS, ROW, BOUND)
    assert "=" not in token and "/" not in token and "+" not in token
    assert decode_cursor(token, KEYS, BOUND) == [WHEN, b"\x00\x01\xff", 2**63 - 1, "01HZZZ"]


def test_round_trip_of_a_null_in_a_nullable_key():
    row = SimpleNamespace(when=WHEN, blob=b"", size=None, id="x")
    assert decode_cursor(encode_cursor(KEYS, row, BOUND), KEYS, BOUND)[2] is None


def test_fingerprint_depends_on_every_parameter_but_not_their_order():
    base = {"sort": "name", "order": "asc", "tag": ["a"]}
    assert fingerprint(base) == fingerprint(dict(reversed(base.items())))
    for change in ({"sort": "version"}, {"order": "desc"}, {"tag": ["b"]}, {"status": "active"}):
        assert fingerprint(base | change) != fingerprint(base)


def test_cursor_bound_to_another_list_is_rejected():
    token = encode_cursor(KEYS, ROW, BOUND)
    other = fingerprint({"sort": "created_at", "order": "asc"})
    with pytest.raises(InvalidInputError, match="another sort"):
        decode_cursor(token, KEYS, other)


def _tampered(**changes: Any) -> str:
    payload = payload_of(encode_cursor(KEYS, ROW, BOUND))
    for index, value in changes.get("values", {}).items():
        payload["v"][index] = value
    payload.update(changes.get("top", {}))
    return raw_cursor(payload)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "!!!!",
        "%%%",
        "é",
        raw_cursor(None),
        raw_cursor([]),
        raw_cursor("text"),
        raw_cursor(42),
        raw_cursor({}),
        raw_cursor({"f": BOUND}),
        raw_cursor({"v": []}),
        _tampered(top={"v": "not a list"}),
        _tampered(top={"v": [None, None, None]}),  # wrong arity
        _tampered(top={"v": [*payload_of(encode_cursor(KEYS, ROW, BOUND))["v"], "extra"]}),
        _tampered(values={0: "2024-05-06T07:08:09"}),  # naive timestamp
        _tampered(values={0: "yesterday"}),
        _tampered(values={0: 1715000000}),
        _tampered(values={0: "0001-01-01T00:00:00+05:00"}),  # overflows in UTC
        _tampered(values={0: None}),  # not nullable
        _tampered(values={1: "not base64!"}),
        _tampered(values={1: 7}),
        _tampered(values={2: "12"}),
        _tampered(values={2: 1.5}),
        _tampered(values={2: True}),
        _tampered(values={2: 2**63}),  # beyond BIGINT: SQLite would overflow
        _tampered(values={2: -(2**63) - 1}),
        _tampered(values={3: 5}),
        _tampered(values={3: None}),
        _tampered(values={3: "a\x00b"}),  # PostgreSQL cannot bind NUL
        _tampered(values={3: ["01HZZZ"]}),
        encode_cursor(KEYS, ROW, BOUND)[:-3],  # truncated
    ],
)
def test_damaged_or_tampered_cursor_is_invalid_input(token):
    with pytest.raises(InvalidInputError) as info:
        decode_cursor(token, KEYS, BOUND)
    assert info.value.status == 400
    assert info.value.code == "INVALID_INPUT"


def test_bit_flip_in_the_fingerprint_is_rejected():
    payload = payload_of(encode_cursor(KEYS, ROW, BOUND))
    payload["f"] = ("0" if payload["f"][0] != "0" else "1") + payload["f"][1:]
    with pytest.raises(InvalidInputError):
        decode_cursor(raw_cursor(payload), KEYS, BOUND)


# ---- paginate over a real table --------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class Item(_Base):
    __tablename__ = "items"
    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    size: Mapped[int | None] = mapped_column(Integer)
    group: Mapped[str] = mapped_column(String(8))


SIZES = [5, None, 3, 5, None, 9, 0, 3, None, 5, 2**40]


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    _Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            Item(id=f"i{n:02d}", size=size, group="ab"[n % 2]) for n, size in enumerate(SIZES)
        )
        session.commit()
        yield session
    engine.dispose()


def _keys(descending: bool) -> list[SortKey]:
    return [
        SortKey(Item.size, lambda i: i.size, "int", descending, nullable=True),
        SortKey(Item.id, lambda i: i.id, "str", descending),
    ]


def _expected(descending: bool, group: str | None = None) -> list[str]:
    rows = [(s, f"i{n:02d}") for n, s in enumerate(SIZES) if group in (None, "ab"[n % 2])]
    present = sorted((r for r in rows if r[0] is not None), reverse=descending)
    missing = sorted((r for r in rows if r[0] is None), reverse=descending)
    return [i for _, i in present + missing]  # missing sizes last in both orders


def _walk(session: Session, descending: bool, limit: int, group: str | None = None) -> list[str]:
    stmt = select(Item)
    if group:
        stmt = stmt.where(Item.group == group)
    bound = {"order": descending, "group": group}
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        page = paginate(
            session, stmt, _keys(descending), limit=limit, cursor=cursor, bound_to=bound
        )
        assert page.limit == limit
        assert page.total == len(_expected(descending, group))
        assert len(page.items) <= limit
        seen.extend(item.id for item in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


@pytest.mark.parametrize(
    ("descending", "limit"), list(itertools.product([False, True], [1, 2, 3, 4, 11, 12]))
)
def test_pages_concatenate_to_the_full_order(session, descending, limit):
    assert _walk(session, descending, limit) == _expected(descending)


@pytest.mark.parametrize("group", ["a", "b"])
def test_filtered_pages_concatenate_to_the_filtered_order(session, group):
    assert _walk(session, True, 2, group) == _expected(True, group)


def test_last_page_has_no_cursor_and_exact_fit_needs_no_extra_page(session):
    page = paginate(session, select(Item), _keys(False), limit=len(SIZES), cursor=None, bound_to={})
    assert len(page.items) == len(SIZES)
    assert page.next_cursor is None


def test_cursor_from_one_filter_is_rejected_by_another(session):
    first = paginate(
        session, select(Item), _keys(False), limit=2, cursor=None, bound_to={"group": "a"}
    )
    assert first.next_cursor
    with pytest.raises(InvalidInputError):
        paginate(
            session,
            select(Item),
            _keys(False),
            limit=2,
            cursor=first.next_cursor,
            bound_to={"group": "b"},
        )
