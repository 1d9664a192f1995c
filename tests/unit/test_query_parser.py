"""The request parser's query strings (app/openapi.py): an empty one loads a schema's defaults
once, and every caller gets its own copy of them."""

from __future__ import annotations

import marshmallow as ma
import pytest
from flask import Flask
from werkzeug.exceptions import UnprocessableEntity

from app.openapi import RegistryParser


class Args(ma.Schema):
    limit = ma.fields.Integer(load_default=20)
    include_deleted = ma.fields.Boolean(load_default=False)


class ListArgs(ma.Schema):
    tag = ma.fields.List(ma.fields.String(), load_default=list)


@pytest.fixture
def app() -> Flask:
    return Flask(__name__)


def test_an_empty_query_string_gives_the_defaults_to_every_caller_in_its_own_dict(
    app: Flask,
) -> None:
    parser = RegistryParser()
    with app.test_request_context("/items"):
        for _ in range(3):
            args = parser.parse(Args, location="query")
            assert args == {"limit": 20, "include_deleted": False}
            args["limit"] = 99  # a view that changes its arguments changes only its own
        assert parser.parse(Args(), location="query") == {"limit": 20, "include_deleted": False}


def test_a_query_string_after_an_empty_one_is_still_parsed_and_checked(app: Flask) -> None:
    parser = RegistryParser()
    with app.test_request_context("/items"):
        parser.parse(Args, location="query")
    with app.test_request_context("/items?limit=5&include_deleted=true"):
        assert parser.parse(Args, location="query") == {"limit": 5, "include_deleted": True}
    with app.test_request_context("/items?limit=many"), pytest.raises(UnprocessableEntity):
        parser.parse(Args, location="query")
    with app.test_request_context("/items?unknown=1"), pytest.raises(UnprocessableEntity):
        parser.parse(Args, location="query")


def test_defaults_that_are_not_plain_values_are_made_anew_each_time(app: Flask) -> None:
    parser = RegistryParser()
    with app.test_request_context("/items"):
        first = parser.parse(ListArgs, location="query")
        first["tag"].append("changed")
        second = parser.parse(ListArgs, location="query")

    assert second == {"tag": []}
