"""Small HTTP helpers shared by routes: conditional requests (ETag / If-Match / If-None-Match),
and the Flask class the app is made of."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

from flask import Flask, request

from app.errors import InvalidInputError

_ETAG_LIST = re.compile(r'^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$')


def _parse(header: str, name: str) -> list[str]:
    if not _ETAG_LIST.match(header):
        raise InvalidInputError(f"the {name} header must be * or a list of quoted entity tags")
    return [tag.strip() for tag in header.split(",")]


def if_match_values() -> list[str] | None:
    """The entity tags of ``If-Match`` (strong comparison), or None when the header is absent."""
    header = request.headers.get("If-Match")
    return None if header is None else _parse(header, "If-Match")


def not_modified(etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (weak comparison, RFC 9110 §13.1.2)."""
    header = request._get_current_object().headers.get("If-None-Match")  # type: ignore[attr-defined]
    if header is None:
        return False
    tags = _parse(header, "If-None-Match")
    return "*" in tags or etag in {tag.removeprefix("W/") for tag in tags}


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@functools.cache  # an app has a few dozen rules; the metrics ask twice per request
def route_template(rule: str) -> str:
    """A Flask rule as the OpenAPI document writes it: ``/v1/assets/<asset_name:name>`` ->
    ``/v1/assets/{name}``."""
    return _CONVERTER.sub(r"{\1}", rule)


class RegistryFlask(Flask):
    """Flask, but whether a function is a coroutine function is found out once per function.
    Flask's ``ensure_sync`` asks it of every hook, view and method at every request (16 times
    per cached read, 3% of its instructions), and the answer never changes. Bound methods are
    remembered by their function: a ``MethodView`` binds new ones at every request."""

    _ASYNC_KEPT = 10_000  # functions; more only if callables were made per request

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_async: dict[Any, bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        key = getattr(func, "__func__", func)
        is_async = self._is_async.get(key)
        if is_async is None:
            if len(self._is_async) >= self._ASYNC_KEPT:
                self._is_async.clear()
            is_async = self._is_async[key] = iscoroutinefunction(func)
        return self.async_to_sync(func) if is_async else func
