"""Schema pieces shared by the domains: paging arguments and the list envelope of CONTRACT.md §1."""

from __future__ import annotations

import datetime as dt
from typing import Any

import marshmallow as ma

from app.paging import DEFAULT_LIMIT, MAX_LIMIT


class UTCDateTime(ma.fields.AwareDateTime):
    """RFC 3339 in and out; naive input is taken as UTC, output is always ``...Z``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", default_timezone=dt.UTC, **kwargs)

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        text: str = value.astimezone(dt.UTC).isoformat(timespec="microseconds")
        return text.replace("+00:00", "Z")

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dt.datetime:
        result = super()._deserialize(value, attr, data, **kwargs)
        try:
            return result.astimezone(dt.UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ma.ValidationError("the date is out of range") from None


class PagingArgsSchema(ma.Schema):
    limit = ma.fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=ma.validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Page size, 1-{MAX_LIMIT}"},
    )
    cursor = ma.fields.String(
        load_default=None,
        validate=ma.validate.Length(min=1, max=2048),
        metadata={"description": "Opaque keyset token from the previous page's next_cursor"},
    )


class StrictBoolean(ma.fields.Boolean):
    """A JSON ``true`` or ``false`` and nothing else (marshmallow's own takes 0, 1, "yes", ...)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def page_schema(item_schema: type[ma.Schema], name: str) -> type[ma.Schema]:
    """The list envelope ``{items, total, limit, next_cursor}`` around ``item_schema``."""
    return ma.Schema.from_dict(
        {
            "items": ma.fields.List(ma.fields.Nested(item_schema)),
            "total": ma.fields.Integer(),
            "limit": ma.fields.Integer(),
            "next_cursor": ma.fields.String(allow_none=True),
        },
        name=name,
    )
