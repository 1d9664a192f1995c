from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.events import service
from app.events.schemas import EventPageSchema, EventQueryArgsSchema
from app.extensions import db
from app.openapi import Blueprint

blp = Blueprint("events", __name__, url_prefix="/v1/events", description="The event feed")


@blp.route("")
class Events(MethodView):
    @blp.requires("event:read")
    @blp.arguments(EventQueryArgsSchema, location="query")
    @blp.response(200, EventPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Events oldest first, as CloudEvents: the same events the relay publishes to NATS.

        Poll with ``after`` set to the last event id seen: an event becomes visible only once
        every event before it is, so paging this way never skips one. ``next_cursor`` is the
        page's last event id while more events follow, else null.
        """
        rows, total, next_cursor = service.list_events(
            db.session,
            after=args["after"] or args["cursor"],
            event_type=args["type"],
            asset_id=args["asset_id"],
            limit=args["limit"],
        )
        return {
            "items": [service.cloudevent_document(row) for row in rows],
            "total": total,
            "limit": args["limit"],
            "next_cursor": next_cursor,
        }
