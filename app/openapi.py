"""flask-smorest glue: the Api that documents problem+json errors, the request parser and the
Blueprint every domain uses (with ``requires`` for permission checks that are also documented).
"""

from __future__ import annotations

import http
from collections.abc import Callable
from copy import deepcopy
from functools import wraps
from typing import Any, TypeVar

import flask
import flask_smorest
import marshmallow as ma
import orjson
from flask import Request
from flask_smorest.utils import prepare_response
from webargs import core
from webargs.flaskparser import FlaskParser

from app.errors import (
    PROBLEM_CONTENT_TYPE,
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

F = TypeVar("F", bound=Callable[..., Any])
_PLAIN = (bool, int, float, str, type(None))


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details as the registry writes them (CONTRACT.md §1)."""

    type = ma.fields.String(metadata={"example": "about:blank"})
    title = ma.fields.String()
    status = ma.fields.Integer()
    detail = ma.fields.String()
    code = ma.fields.String(metadata={"description": "Stable machine-readable error code"})
    request_id = ma.fields.String(allow_none=True)
    errors = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.List(ma.fields.String()),
        metadata={"description": "Field path -> messages (422 only)"},
    )


def is_json_mimetype(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


class RegistryParser(FlaskParser):
    """webargs parser: strict JSON (orjson), 415 for a body that is not JSON, unknown query
    parameters rejected rather than silently ignored."""

    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {
        "json": None,
        "form": None,
        "json_or_form": None,
        "querystring": ma.RAISE,
        "query": ma.RAISE,
        "headers": ma.EXCLUDE,
        "cookies": ma.EXCLUDE,
        "files": ma.EXCLUDE,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # schema (class or instance) -> what it loads from an empty query string
        self._empty_query: dict[Any, dict[str, Any]] = {}
        self._instances: dict[type[ma.Schema], ma.Schema] = {}

    def _get_schema(self, argmap: Any, req: Request) -> ma.Schema:
        """One instance per schema class, not one per request: ``@blp.arguments`` hands webargs
        the class, and making an instance deep-copies every declared field: 79 us for a
        registration's schema, twice what loading its body costs (66 us for the list's query
        schema). Marshmallow schemas keep no state between loads."""
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema = self._instances.get(argmap)
            if schema is None:
                schema = self._instances.setdefault(argmap, argmap())
            return schema
        return super()._get_schema(argmap, req)

    def parse(self, argmap: Any, req: Request | None = None, **kwargs: Any) -> Any:
        """Most reads come without a query string, and a schema loads one to the same defaults
        every time: those are loaded once per schema (when all are plain values) and copied,
        instead of a marshmallow load per request (a tenth of a cached read's time)."""
        location = kwargs.get("location")
        if (
            location not in ("query", "querystring")
            or not (
                isinstance(argmap, ma.Schema)
                or (isinstance(argmap, type) and issubclass(argmap, ma.Schema))
            )
            or kwargs.get("validate") is not None
        ):
            return super().parse(argmap, req, **kwargs)
        request = req if req is not None else flask.request._get_current_object()  # type: ignore[attr-defined]
        if request.query_string:
            return super().parse(argmap, request, **kwargs)
        known = self._empty_query.get(argmap)
        if known is not None:
            return dict(known)
        data = super().parse(argmap, request, **kwargs)
        plain = isinstance(data, dict) and all(isinstance(v, _PLAIN) for v in data.values())
        if plain and len(self._empty_query) < 1000:  # bounded, should schemas be made per call
            self._empty_query[argmap] = dict(data)
        return data

    def _load_location_data(self, *, schema: ma.Schema, req: Request, location: str) -> Any:
        data = super()._load_location_data(schema=schema, req=req, location=location)
        if location == "json" and data is core.missing and not _body_optional(schema):
            # A documented, required body: "no body" is not "an empty object".
            raise InvalidInputError("this operation needs a JSON body")
        return data

    def _raw_load_json(self, req: Request) -> Any:
        data = req.get_data(cache=True)
        limit = req.max_content_length
        if req.content_length is None and limit is not None and len(data) >= limit:
            # A chunked body (no Content-Length) is cut at the limit by Werkzeug, not refused:
            # without this it would parse as truncated JSON (400) instead of being a 413.
            raise PayloadTooLargeError(f"the request body exceeds {limit} bytes")
        if not data:
            if req.mimetype and not is_json_mimetype(req.mimetype):
                raise UnsupportedMediaTypeError(
                    f"expected Content-Type application/json, got {req.mimetype}"
                )
            return core.missing
        if not is_json_mimetype(req.mimetype):
            raise UnsupportedMediaTypeError(
                f"expected Content-Type application/json, got {req.mimetype or 'none'}"
            )
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"the request body is not valid JSON: {exc}") from None
        # NUL can only arrive escaped; PostgreSQL cannot store it, so refuse it on every backend.
        if b"\\u0000" in data and _holds_nul(body):
            raise InvalidInputError("the request body must not contain NUL characters")
        return body


def _body_optional(schema: ma.Schema) -> bool:
    """A schema whose body may be left out entirely: ``class Meta: body_optional = True``."""
    return bool(getattr(getattr(schema, "Meta", None), "body_optional", False))


def _holds_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds a NUL character in any string or key (iteratively:
    orjson bounds the depth, but a recursion here would need a bound of its own)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class RegistryApi(flask_smorest.Api):
    """Api whose documented error responses are problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_CONTENT_TYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)

    def _register_error_handlers(self) -> None:
        # app.errors.register_error_handlers owns error rendering.
        pass


class Blueprint(flask_smorest.Blueprint):
    """smorest Blueprint with the registry's parser and a documented permission decorator."""

    ARGUMENTS_PARSER = RegistryParser()

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Callable[[F], F]:
        """smorest's ``arguments``, also documenting the problems the parser itself answers: a
        JSON body that does not parse (400) or is not JSON (415), a damaged cursor (400)."""
        parse = super().arguments(schema, location=location, **kwargs)
        documented: list[tuple[int, str]] = []
        if location == "json":
            documented = [(400, "BAD_REQUEST"), (415, "UNSUPPORTED_MEDIA_TYPE")]
        elif "cursor" in getattr(schema, "_declared_fields", {}):  # a class or an instance
            documented = [(400, "BAD_REQUEST")]

        def decorator(func: F) -> F:
            wrapped = parse(func)
            apidoc = deepcopy(getattr(wrapped, "_apidoc", {}))
            responses = apidoc.setdefault("response", {}).setdefault("responses", {})
            for status, name in documented:
                if name not in responses.setdefault(status, []):
                    responses[status].append(name)
            wrapped._apidoc = apidoc
            return wrapped  # type: ignore[no-any-return]

        return decorator

    def alt_response(self, status_code: Any, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        """smorest's ``alt_response`` as documentation only. Its wrapper does nothing else when
        called but call the view (through ``current_app.ensure_sync``, which the next layer does
        anyway), and each such layer cost every request of the view a little: the view comes
        back unwrapped, carrying the documentation."""
        document = super().alt_response(status_code, *args, **kwargs)

        def decorator(func: F) -> F:
            func._apidoc = document(func)._apidoc  # type: ignore[attr-defined]
            return func

        return decorator

    def requires(self, permission: str | None) -> Callable[[F], F]:
        """Require an authenticated caller holding ``permission`` (``resource:action``; None:
        any authenticated caller).

        The check runs before argument parsing, so an anonymous caller gets 401 rather than a 422
        for a body it was never allowed to send. The permission is kept on the view function
        (``_required_permission``) so tests can walk every route.
        """
        from app.auth.identity import require_permission

        def decorator(func: F) -> F:
            @wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                require_permission(permission)
                return func(*args, **kwargs)

            wrapper._required_permission = permission  # type: ignore[attr-defined]
            apidoc = deepcopy(getattr(wrapper, "_apidoc", {}))
            responses = apidoc.setdefault("response", {}).setdefault("responses", {})
            responses.setdefault(401, []).append("UNAUTHORIZED")
            if permission is not None:
                responses.setdefault(403, []).append("FORBIDDEN")
            apidoc["manual_doc"] = {
                **apidoc.get("manual_doc", {}),
                "security": [{"bearerAuth": []}, {"apiKeyAuth": []}],
            }
            wrapper._apidoc = apidoc  # type: ignore[attr-defined]
            return wrapper  # type: ignore[return-value]

        return decorator
