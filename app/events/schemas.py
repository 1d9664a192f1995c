from __future__ import annotations

import marshmallow as ma

from app.events.models import EVENT_TYPES
from app.paging import DEFAULT_LIMIT, MAX_LIMIT
from app.schemas import page_schema

EVENT_ID = ma.validate.Length(min=1, max=26)


class CloudEventSchema(ma.Schema):
    """An event as a CloudEvents 1.0 JSON object (structured mode), exactly as the relay
    publishes it to NATS JetStream."""

    specversion = ma.fields.String(required=True, metadata={"example": "1.0"})
    id = ma.fields.String(required=True, metadata={"description": "Event id (a ULID)"})
    source = ma.fields.String(required=True, metadata={"example": "/llm-registry"})
    type = ma.fields.String(required=True, validate=ma.validate.OneOf(EVENT_TYPES))
    subject = ma.fields.String(metadata={"description": "The asset id, when there is one"})
    time = ma.fields.String(required=True, metadata={"description": "RFC 3339 UTC"})
    datacontenttype = ma.fields.String(metadata={"example": "application/json"})
    sequence = ma.fields.String(
        metadata={"description": "Feed position, zero-padded so that it sorts as text too"}
    )
    actor = ma.fields.String(metadata={"description": "Username behind the change"})
    requestid = ma.fields.String(metadata={"description": "X-Request-ID of the change"})
    traceid = ma.fields.String(metadata={"description": "OpenTelemetry trace id"})
    traceparent = ma.fields.String(
        metadata={"description": "W3C traceparent of the change (distributed tracing extension)"}
    )
    data = ma.fields.Dict(required=True)


class EventQueryArgsSchema(ma.Schema):
    after = ma.fields.String(
        load_default=None,
        validate=EVENT_ID,
        metadata={"description": "Only events after the event with this id"},
    )
    cursor = ma.fields.String(
        load_default=None,
        validate=EVENT_ID,
        metadata={"description": "The previous page's next_cursor (the same as after)"},
    )
    type = ma.fields.String(load_default=None, validate=ma.validate.OneOf(EVENT_TYPES))
    asset_id = ma.fields.String(load_default=None, validate=ma.validate.Length(min=1, max=26))
    limit = ma.fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=ma.validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Page size, 1-{MAX_LIMIT}"},
    )

    @ma.validates_schema
    def _one_position(self, data: dict[str, object], **_: object) -> None:
        if data.get("after") and data.get("cursor") and data["after"] != data["cursor"]:
            raise ma.ValidationError("Give after or cursor, not two different ids.", "cursor")


EventPageSchema = page_schema(CloudEventSchema, "EventPage")
