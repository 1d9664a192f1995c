from __future__ import annotations

import marshmallow as ma


class BlobSchema(ma.Schema):
    digest = ma.fields.String(metadata={"example": "sha256:" + "0" * 64})
    size_bytes = ma.fields.Integer()
    uri = ma.fields.String(metadata={"description": "Where the store keeps it (storage.uri)"})


class BlobReadArgsSchema(ma.Schema):
    redirect = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "On S3: 302 to a presigned URL instead of streaming"},
    )
