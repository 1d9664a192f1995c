"""The OpenAPI document describes the API as it is: every contract path, request and response
schemas, problem+json errors, bearer security; and the permission matrix of CONTRACT.md §2 holds
for every documented operation and every role."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from app.auth.permissions import ROLE_PERMISSIONS, allows
from tests.conftest import login

pytestmark = pytest.mark.integration

CONTRACT_PATHS = {
    "/v1/auth/login",
    "/v1/auth/me",
    "/v1/users",
    "/v1/users/{user_id}",
    "/v1/assets",
    "/v1/assets/{asset_id}",
    "/v1/assets/{name}/versions",
    "/v1/assets/{name}/versions/latest",
    "/v1/assets/{name}/versions/{version}",
    "/v1/jobs",
    "/v1/jobs/{job_id}",
    "/health",
    "/health/live",
    "/health/ready",
    "/version",
}
# /v1 operations that take no credentials (CONTRACT.md §2).
PUBLIC_V1 = {"/v1/auth/login", "/v1/auth/refresh"}
METHODS = ("get", "put", "post", "patch", "delete")
NOT_DECORATED = object()


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = spec["components"][kind][name]
    return node


# --- the document ----------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "LLM Registry"
    validate(spec)  # raises on any violation of the OpenAPI 3 schema


def test_every_contract_path_is_documented(spec: dict[str, Any]) -> None:
    assert set(spec["paths"]) >= CONTRACT_PATHS


def test_bodies_and_successes_have_schemas(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        if method in ("post", "patch", "put") and path not in ("/v1/auth/logout",):
            content = operation["requestBody"]["content"]
            assert content, (path, method)
            assert all("schema" in media for media in content.values()), (path, method)
        successes = {k: v for k, v in operation["responses"].items() if k.startswith("2")}
        assert successes, (path, method)
        for status, response in successes.items():
            if status in ("204",):
                continue
            content = _resolve(spec, response)["content"]
            assert content, (path, method, status)
            for media in content.values():
                assert media["schema"], (path, method, status)
        assert operation.get("summary"), (path, method)


def test_errors_are_documented_as_problem_json(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]["properties"]
    assert {"type", "title", "status", "detail", "code", "request_id", "errors"} <= set(problem)
    assert problem["status"]["type"] == "integer"
    seen = 0
    for path, method, operation in _operations(spec):
        assert "default" in operation["responses"], (path, method)
        for status, response in operation["responses"].items():
            if status == "default" or status[0] in "45":
                resolved = _resolve(spec, response)
                if path.startswith("/health") and status == "503":
                    continue  # an unhealthy report is the health document itself
                assert set(resolved["content"]) == {"application/problem+json"}, (
                    path,
                    method,
                    status,
                )
                schema = resolved["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}
                seen += 1
    assert seen > 40


def test_protected_operations_carry_bearer_security_and_401(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    api_key = spec["components"]["securitySchemes"]["apiKeyAuth"]
    assert (api_key["type"], api_key["in"], api_key["name"]) == ("apiKey", "header", "X-API-Key")
    for path, method, operation in _operations(spec):
        if path.startswith("/v1") and path not in PUBLIC_V1:
            assert operation["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}], (
                path,
                method,
            )
            assert "401" in operation["responses"], (path, method)
        else:
            assert operation.get("security", []) == [], (path, method)


def test_parsing_problems_are_documented(spec: dict[str, Any]) -> None:
    bodies = lists = 0
    for path, method, operation in _operations(spec):
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            assert {"400", "415", "422"} <= set(operation["responses"]), (path, method)
            bodies += 1
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        if "cursor" in names:
            assert {"400", "422"} <= set(operation["responses"]), (path, method)
            lists += 1
    assert bodies >= 4 and lists >= 3


def test_docs_serve_html(client: FlaskClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "/openapi.json" in response.get_data(as_text=True)


# --- the permission matrix, for every documented operation -----------------------------------

ROLES = ("anonymous", "viewer", "user", "developer", "admin")
SAMPLE_VALUES = {"name": "org/model", "version": "1.0.0"}


def _permission_of(app: Flask, url: str, method: str) -> Any:
    """What ``Blueprint.requires`` recorded on the view that serves ``method url``."""
    endpoint, _ = app.url_map.bind("localhost").match(url, method=method.upper())
    view_class = app.view_functions[endpoint].view_class  # type: ignore[attr-defined]
    return getattr(getattr(view_class, method), "_required_permission", NOT_DECORATED)


def _url(path: str, caller_id: str) -> str:
    def value(match: re.Match[str]) -> str:
        # The caller's own id for users: what a non-admin may touch is decided by the service.
        name = match.group(1)
        return (
            caller_id
            if name == "user_id"
            else SAMPLE_VALUES.get(name, "01HZZZZZZZZZZZZZZZZZZZZZZZ")
        )

    return re.sub(r"\{(\w+)\}", value, path)


def test_every_route_answers_each_role_as_the_matrix_says(
    app: Flask, client: FlaskClient, spec: dict[str, Any], users: dict[str, str], as_role: Any
) -> None:
    checked = 0
    for path, method, _operation in _operations(spec):
        if not path.startswith("/v1"):
            continue
        for role in ROLES:
            caller = client if role == "anonymous" else as_role(role)
            if path == "/v1/auth/logout" and role != "anonymous":
                caller = login(client, f"{role}-1")  # logout ends its login: not the shared one
            url = _url(path, users.get(role, "01HZZZZZZZZZZZZZZZZZZZZZZZ"))
            permission = _permission_of(app, url, method)
            kwargs = {"json": {"garbage": True}} if method in ("post", "patch", "put") else {}

            status = getattr(caller, method)(url, **kwargs).status_code

            where = (role, method.upper(), url, permission, status)
            assert status < 500, where
            if path in PUBLIC_V1:
                assert permission is NOT_DECORATED, where
                assert status not in (401, 403), where
            elif role == "anonymous":
                assert permission is not NOT_DECORATED, where
                assert status == 401, where
            elif permission is None or allows(ROLE_PERMISSIONS[role], permission):
                assert status not in (401, 403), where
            else:
                assert status == 403, where
            checked += 1
    assert checked >= 5 * len([p for p in CONTRACT_PATHS if p.startswith("/v1")])
