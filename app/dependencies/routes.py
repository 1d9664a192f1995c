from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView

from app.dependencies import service
from app.dependencies.schemas import GraphArgsSchema, GraphSchema
from app.extensions import db
from app.json import json_bytes
from app.openapi import Blueprint

blp = Blueprint(
    "dependencies", __name__, url_prefix="/v1/assets", description="The dependency graph"
)


def _graph(asset_id: str, *, reverse: bool, max_depth: int | None) -> Response:
    # The graph is built as plain JSON-ready values in GraphSchema's shape (the schema documents
    # it): serialised once with orjson rather than walked node by node by marshmallow.
    graph = service.dependency_graph(db.session, asset_id, reverse=reverse, max_depth=max_depth)
    return Response(json_bytes(graph), mimetype="application/json")


@blp.route("/<string:asset_id>/dependencies")
class Dependencies(MethodView):
    @blp.requires("dependency:read")
    @blp.arguments(GraphArgsSchema, location="query")
    @blp.response(200, GraphSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], asset_id: str) -> Response:
        """What this asset depends on, transitively, along the locked edges."""
        return _graph(asset_id, reverse=False, max_depth=args["max_depth"])


@blp.route("/<string:asset_id>/dependents")
class Dependents(MethodView):
    @blp.requires("dependency:read")
    @blp.arguments(GraphArgsSchema, location="query")
    @blp.response(200, GraphSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], asset_id: str) -> Response:
        """What depends on this asset, transitively (edges keep their from -> to direction)."""
        return _graph(asset_id, reverse=True, max_depth=args["max_depth"])
