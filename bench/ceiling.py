"""The ceiling: a bare Flask app returning a small JSON, served by bench/bench_http.py under the
same gunicorn settings as the registry. Nothing the registry does per request is here."""

from __future__ import annotations

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

app = Flask(__name__)


@app.get("/ping")
def ping() -> ResponseReturnValue:
    return jsonify(id="01JBENCH00000000000000000", status="active", name="ceiling")
