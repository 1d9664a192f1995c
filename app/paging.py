"""Keyset paging shared by every list endpoint (CONTRACT.md §1).

A cursor is an opaque token carrying the last row's sort values and a fingerprint of the list's
sort, order and filters; reusing it with other ones is a 400. Keyset (not offset) paging never
repeats or skips a row whose sort values do not change while paging.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import Select, and_, false, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from app.db import DbSession
from app.errors import InvalidInputError

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclasses.dataclass(frozen=True)
class SortKey:
    """One ORDER BY term: the SQL expression, how to read it off a row, and its value kind."""

    expression: Any  # a mapped attribute or a SQL expression
    value_of: Callable[[Any], Any]
    kind: str  # "str" | "int" | "datetime" | "bytes"
    descending: bool = False
    nullable: bool = False  # NULLs sort last in both directions


@dataclasses.dataclass
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    next_cursor: str | None


def fingerprint(params: Mapping[str, Any]) -> str:
    """A short digest of everything the cursor is bound to (sort, order, filters)."""
    canonical = orjson.dumps(params, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()[:16]


def _encode_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        return value.isoformat()
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    return value


# A cursor is not signed: whatever it carries is bound as a query parameter, so each value must
# be one that every backend can bind (SQLite overflows past 64 bits, PostgreSQL rejects NUL).
_INT_RANGE = range(-(2**63), 2**63)


def _decode_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        if not isinstance(value, str):
            raise ValueError("not a timestamp")
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed.astimezone(dt.UTC)  # OverflowError near year 1 or 9999
    if kind == "bytes":
        if not isinstance(value, str):
            raise ValueError("not base64")
        return base64.b64decode(value, validate=True)
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value not in _INT_RANGE:
            raise ValueError("not a 64-bit integer")
        return value
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError("not a string")
    return value


def encode_cursor(keys: Sequence[SortKey], row: Any, bound_to: str) -> str:
    payload = {"f": bound_to, "v": [_encode_value(k.kind, k.value_of(row)) for k in keys]}
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode("ascii").rstrip("=")


def decode_cursor(token: str, keys: Sequence[SortKey], bound_to: str) -> list[Any]:
    """The sort values of the cursor's row; 400 if the token is damaged or bound to another list."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = orjson.loads(raw)
        values = payload["v"]
        if payload["f"] != bound_to:
            raise InvalidInputError(
                "the cursor belongs to a list with another sort, order or filters"
            )
        if not isinstance(values, list) or len(values) != len(keys):
            raise ValueError("wrong arity")
        decoded = [_decode_value(k.kind, v) for k, v in zip(keys, values, strict=True)]
    except InvalidInputError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidInputError("the cursor is not valid") from None
    if any(v is None and not k.nullable for k, v in zip(keys, decoded, strict=True)):
        raise InvalidInputError("the cursor is not valid")
    return decoded


def _after(key: SortKey, value: Any) -> ColumnElement[bool]:
    if value is None:
        return false()  # the NULL group is last: nothing comes after it on this key
    beyond = key.expression < value if key.descending else key.expression > value
    return or_(beyond, key.expression.is_(None)) if key.nullable else beyond


def _equal(key: SortKey, value: Any) -> ColumnElement[bool]:
    expression: ColumnElement[bool] = (
        key.expression.is_(None) if value is None else key.expression == value
    )
    return expression


def keyset_predicate(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after the cursor row: OR over i of (keys before i equal AND key i after)."""
    clauses = []
    for i, key in enumerate(keys):
        equal_before = [_equal(keys[j], values[j]) for j in range(i)]
        clauses.append(and_(*equal_before, _after(key, values[i])))
    return or_(*clauses)


def order_by(keys: Sequence[SortKey]) -> list[Any]:
    terms: list[Any] = []
    for key in keys:
        term = key.expression.desc() if key.descending else key.expression.asc()
        # NULLS LAST (SQLite >= 3.30 and PostgreSQL): the order of the indexes on those keys.
        terms.append(term.nulls_last() if key.nullable else term)
    return terms


def paginate(
    session: DbSession,
    stmt: Select[Any],
    keys: Sequence[SortKey],
    *,
    limit: int,
    cursor: str | None,
    bound_to: Mapping[str, Any],
    count: Callable[[], int | None] | None = None,
    as_rows: bool = False,
) -> Page[Any]:
    """One page of ``stmt`` (already filtered) in ``keys`` order, plus the filtered total:
    none to count when the first page holds every match, else ``count()`` where the caller
    knows a cheaper way than COUNT over ``stmt`` (COUNT when it returns None). Items are
    ``stmt``'s first column (an entity), or with ``as_rows`` its rows (columns named as the
    keys read them).

    The last key must be unique (the id) so that the order is total.
    """
    binding = fingerprint(bound_to)
    page_stmt = stmt
    if cursor:
        page_stmt = page_stmt.where(keyset_predicate(keys, decode_cursor(cursor, keys, binding)))
    page_stmt = page_stmt.order_by(*order_by(keys)).limit(limit + 1)
    rows: list[Any] = (
        list(session.execute(page_stmt).all()) if as_rows else list(session.scalars(page_stmt))
    )
    total = None
    if not cursor and len(rows) <= limit:
        total = len(rows)  # the first page holds every match: nothing left to count
    elif count is not None:
        total = count()
    if total is None:
        total = (
            session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
        )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(keys, rows[-1], binding)
    return Page(items=rows, total=total, limit=limit, next_cursor=next_cursor)
