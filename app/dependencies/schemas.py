from __future__ import annotations

import marshmallow as ma


class GraphArgsSchema(ma.Schema):
    max_depth = ma.fields.Integer(
        load_default=None,
        validate=ma.validate.Range(min=0, max=10_000),
        metadata={"description": "Stop this many edges from the root (default: unlimited)"},
    )


class GraphNodeSchema(ma.Schema):
    id = ma.fields.String()
    asset_type = ma.fields.String()
    name = ma.fields.String()
    version = ma.fields.String()
    status = ma.fields.String()
    depth = ma.fields.Integer()


class GraphEdgeSchema(ma.Schema):
    from_ = ma.fields.String(data_key="from", attribute="from")
    to = ma.fields.String()
    constraint = ma.fields.String(allow_none=True)


class GraphSchema(ma.Schema):
    root = ma.fields.String()
    nodes = ma.fields.List(ma.fields.Nested(GraphNodeSchema))
    edges = ma.fields.List(ma.fields.Nested(GraphEdgeSchema))
    truncated = ma.fields.Boolean()
