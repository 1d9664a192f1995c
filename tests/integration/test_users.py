"""User accounts over HTTP: create, list, read and update; who may do what (CONTRACT.md §2)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import PASSWORD, login, make_settings

pytestmark = pytest.mark.integration

NEW_PASSWORD = "a brand new passphrase"


def _create(api: Any, username: str, roles: list[str] | None = None, **extra: Any) -> Any:
    body = {"username": username, "password": PASSWORD, "roles": roles or ["viewer"], **extra}
    return api.post("/v1/users", json=body)


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["code"] == code
    return body


# --- create ----------------------------------------------------------------------------------


def test_admin_creates_a_user_who_can_then_log_in(admin: Any, client: FlaskClient) -> None:
    response = _create(admin, "alice.smith@example", ["user", "viewer"])

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "username", "roles", "disabled", "created_at", "updated_at"}
    assert body["username"] == "alice.smith@example"
    assert body["roles"] == ["user", "viewer"]
    assert body["disabled"] is False
    assert len(body["id"]) == 26
    assert body["created_at"].endswith("Z")
    assert PASSWORD not in response.get_data(as_text=True)
    assert "argon2" not in response.get_data(as_text=True)

    me = login(client, "alice.smith@example").get("/v1/auth/me").get_json()
    assert me["id"] == body["id"]
    assert me["roles"] == ["user", "viewer"]


def test_duplicate_roles_are_kept_once(admin: Any) -> None:
    body = _create(admin, "bob", ["viewer", "viewer", "user"]).get_json()

    assert body["roles"] == ["viewer", "user"]


def test_duplicate_username_is_409_already_exists(admin: Any) -> None:
    assert _create(admin, "carol").status_code == 201

    problem = _problem(_create(admin, "carol", ["admin"]), 409, "ALREADY_EXISTS")

    assert "carol" in problem["detail"]
    assert admin.get("/v1/users").get_json()["total"] == 5


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"username": "Upper"}, {"username"}),
        ({"username": "x"}, {"username"}),
        ({"username": "-dash-first"}, {"username"}),
        ({"username": "has space"}, {"username"}),
        ({"username": "a" * 65}, {"username"}),
        ({"password": "short"}, {"password"}),
        ({"password": "x" * 1025}, {"password"}),
        ({"roles": ["superuser"]}, {"roles.0"}),
        ({"roles": ["viewer", "root"]}, {"roles.1"}),
        ({"roles": []}, {"roles"}),
        ({"roles": "admin"}, {"roles"}),
        ({"password": None}, {"password"}),
        ({"disabled": True}, {"disabled"}),
    ],
)
def test_invalid_new_user_is_422_with_field_errors(
    admin: Any, changes: dict[str, Any], fields: set[str]
) -> None:
    body = {"username": "valid-name", "password": PASSWORD, "roles": ["viewer"], **changes}

    problem = _problem(admin.post("/v1/users", json=body), 422, "VALIDATION_FAILED")

    assert set(problem["errors"]) == fields
    assert all(isinstance(m, list) and m for m in problem["errors"].values())
    assert admin.get("/v1/users").get_json()["total"] == 4


def test_missing_fields_are_each_named(admin: Any) -> None:
    problem = _problem(admin.post("/v1/users", json={}), 422, "VALIDATION_FAILED")

    assert set(problem["errors"]) == {"username", "password", "roles"}


@pytest.mark.parametrize("role", ["viewer", "user", "developer"])
def test_only_admins_create_users(as_role: Any, role: str) -> None:
    _problem(_create(as_role(role), "mallory", ["admin"]), 403, "FORBIDDEN")

    assert as_role("admin").get("/v1/users").get_json()["total"] == 4


def test_anonymous_cannot_create_users(client: FlaskClient, users: dict[str, str]) -> None:
    response = client.post(
        "/v1/users", json={"username": "eve", "password": PASSWORD, "roles": ["admin"]}
    )

    _problem(response, 401, "UNAUTHORIZED")


# --- list and read ---------------------------------------------------------------------------


def test_list_shape_and_newest_first(admin: Any, users: dict[str, str]) -> None:
    response = admin.get("/v1/users")

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"items", "total", "limit", "next_cursor"}
    assert body["total"] == 4
    assert body["limit"] == 50
    assert body["next_cursor"] is None
    items = body["items"]
    assert [u["username"] for u in items] == ["admin-1", "developer-1", "user-1", "viewer-1"]
    keys = [(u["created_at"], u["id"]) for u in items]
    assert keys == sorted(keys, reverse=True)
    assert all("password" not in u and "password_hash" not in u for u in items)


def test_paging_visits_every_user_once(admin: Any) -> None:
    for i in range(7):
        assert _create(admin, f"pager-{i}").status_code == 201
    expected = [u["id"] for u in admin.get("/v1/users?limit=500").get_json()["items"]]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/v1/users?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = admin.get(query).get_json()
        pages += 1
        assert body["total"] == 11
        assert body["limit"] == 3
        assert len(body["items"]) <= 3
        seen += [u["id"] for u in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert pages == 4
    assert seen == expected
    assert len(set(seen)) == 11


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=-1", "limit=abc", "sort=name"])
def test_bad_list_queries_are_422(admin: Any, users: dict[str, str], query: str) -> None:
    _problem(admin.get(f"/v1/users?{query}"), 422, "VALIDATION_FAILED")


@pytest.mark.parametrize("cursor", ["garbage", "eyJmIjoiYWJjIiwidiI6WzEsMl19", "%00"])
def test_a_damaged_cursor_is_400(admin: Any, users: dict[str, str], cursor: str) -> None:
    _problem(admin.get(f"/v1/users?cursor={cursor}"), 400, "INVALID_INPUT")


def test_get_one_user(admin: Any, users: dict[str, str]) -> None:
    response = admin.get(f"/v1/users/{users['developer']}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == users["developer"]
    assert body["username"] == "developer-1"
    assert body["roles"] == ["developer"]
    assert "password_hash" not in body


@pytest.mark.parametrize("user_id", ["01HZZZZZZZZZZZZZZZZZZZZZZZ", "nope", "x" * 300, "%2500"])
def test_unknown_user_is_404(admin: Any, users: dict[str, str], user_id: str) -> None:
    problem = _problem(admin.get(f"/v1/users/{user_id}"), 404, "NOT_FOUND")

    assert problem["status"] == 404


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("get", "/v1/users/ab%00cd", None),
        ("get", "/v1/users?cursor=%00", None),
        ("patch", "/v1/users/%00", {"disabled": True}),
        ("post", "/v1/users", {"username": "nul\u0000", "password": PASSWORD, "roles": ["user"]}),
        ("post", "/v1/users", {"username": "ok-name", "password": "pass\u0000word!"}),
    ],
)
def test_nul_characters_are_400_on_every_backend(
    admin: Any, users: dict[str, str], method: str, url: str, body: Any
) -> None:
    response = getattr(admin, method)(url, json=body)

    _problem(response, 400, "INVALID_INPUT")
    assert admin.get("/v1/users").get_json()["total"] == 4


@pytest.mark.parametrize("role", ["viewer", "user", "developer"])
def test_only_admins_list_and_read_users(as_role: Any, users: dict[str, str], role: str) -> None:
    api = as_role(role)

    _problem(api.get("/v1/users"), 403, "FORBIDDEN")
    _problem(api.get(f"/v1/users/{users[role]}"), 403, "FORBIDDEN")
    _problem(api.get("/v1/users/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 403, "FORBIDDEN")


# --- update ----------------------------------------------------------------------------------


def test_admin_changes_roles_and_disables(admin: Any, users: dict[str, str]) -> None:
    response = admin.patch(f"/v1/users/{users['viewer']}", json={"roles": ["developer"]})

    assert response.status_code == 200
    assert response.get_json()["roles"] == ["developer"]
    assert admin.get(f"/v1/users/{users['viewer']}").get_json()["roles"] == ["developer"]

    response = admin.patch(f"/v1/users/{users['viewer']}", json={"disabled": True})
    assert response.status_code == 200
    assert response.get_json()["disabled"] is True
    assert response.get_json()["roles"] == ["developer"]


def test_a_disabled_user_cannot_log_in_until_enabled(
    admin: Any, client: FlaskClient, users: dict[str, str]
) -> None:
    admin.patch(f"/v1/users/{users['user']}", json={"disabled": True})
    response = client.post("/v1/auth/login", json={"username": "user-1", "password": PASSWORD})
    _problem(response, 401, "UNAUTHORIZED")

    admin.patch(f"/v1/users/{users['user']}", json={"disabled": False})
    assert login(client, "user-1").get("/v1/auth/me").status_code == 200


def test_admin_sets_another_users_password(
    admin: Any, client: FlaskClient, users: dict[str, str]
) -> None:
    response = admin.patch(f"/v1/users/{users['viewer']}", json={"password": NEW_PASSWORD})

    assert response.status_code == 200
    login(client, "viewer-1", NEW_PASSWORD)
    old = client.post("/v1/auth/login", json={"username": "viewer-1", "password": PASSWORD})
    assert old.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"roles": ["god"]}, "roles.0"),
        ({"roles": []}, "roles"),
        ({"password": "short"}, "password"),
        ({"disabled": "maybe"}, "disabled"),
        ({"username": "renamed"}, "username"),
    ],
)
def test_invalid_update_is_422(
    admin: Any, users: dict[str, str], body: dict[str, Any], field: str
) -> None:
    url = f"/v1/users/{users['viewer']}"

    problem = _problem(admin.patch(url, json=body), 422, "VALIDATION_FAILED")

    assert set(problem["errors"]) == {field}
    unchanged = admin.get(url).get_json()
    assert (unchanged["roles"], unchanged["username"]) == (["viewer"], "viewer-1")


def test_patch_unknown_user_is_404(admin: Any, users: dict[str, str]) -> None:
    _problem(
        admin.patch("/v1/users/01HZZZZZZZZZZZZZZZZZZZZZZZ", json={"disabled": True}),
        404,
        "NOT_FOUND",
    )


@pytest.mark.parametrize("role", ["viewer", "developer", "admin"])
def test_own_password_change_needs_the_current_password(
    as_role: Any, client: FlaskClient, users: dict[str, str], role: str
) -> None:
    api = as_role(role)
    url = f"/v1/users/{users[role]}"

    missing = _problem(api.patch(url, json={"password": NEW_PASSWORD}), 422, "VALIDATION_FAILED")
    assert set(missing["errors"]) == {"current_password"}
    wrong = _problem(
        api.patch(url, json={"password": NEW_PASSWORD, "current_password": "not it at all"}),
        422,
        "VALIDATION_FAILED",
    )
    assert set(wrong["errors"]) == {"current_password"}
    login(client, f"{role}-1", PASSWORD)  # unchanged so far

    response = api.patch(url, json={"password": NEW_PASSWORD, "current_password": PASSWORD})

    assert response.status_code == 200
    assert response.get_json()["id"] == users[role]
    assert login(client, f"{role}-1", NEW_PASSWORD).get("/v1/auth/me").status_code == 200
    old = client.post("/v1/auth/login", json={"username": f"{role}-1", "password": PASSWORD})
    _problem(old, 401, "UNAUTHORIZED")


def test_current_password_alone_is_422(viewer: Any, users: dict[str, str]) -> None:
    response = viewer.patch(f"/v1/users/{users['viewer']}", json={"current_password": PASSWORD})

    assert set(_problem(response, 422, "VALIDATION_FAILED")["errors"]) == {"current_password"}


@pytest.mark.parametrize(
    "body",
    [
        {"roles": ["admin"]},
        {"disabled": False},
        {"roles": ["viewer"], "password": NEW_PASSWORD, "current_password": PASSWORD},
    ],
)
def test_non_admin_may_not_change_own_roles_or_flag(
    viewer: Any, users: dict[str, str], body: dict[str, Any]
) -> None:
    _problem(viewer.patch(f"/v1/users/{users['viewer']}", json=body), 403, "FORBIDDEN")

    assert viewer.get("/v1/auth/me").get_json()["roles"] == ["viewer"]


@pytest.mark.parametrize(
    "body",
    [
        {"password": NEW_PASSWORD, "current_password": PASSWORD},
        {"disabled": True},
        {},
    ],
)
def test_non_admin_may_not_change_other_users(
    dev: Any, client: FlaskClient, users: dict[str, str], body: dict[str, Any]
) -> None:
    _problem(dev.patch(f"/v1/users/{users['admin']}", json=body), 403, "FORBIDDEN")
    # Even for an id that does not exist: a non-admin learns nothing about other accounts.
    _problem(dev.patch("/v1/users/01HZZZZZZZZZZZZZZZZZZZZZZZ", json=body), 403, "FORBIDDEN")

    login(client, "admin-1", PASSWORD)


@pytest.mark.parametrize("body", [{"roles": ["developer"]}, {"disabled": True}])
def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(
    admin: Any, users: dict[str, str], body: dict[str, Any]
) -> None:
    problem = _problem(admin.patch(f"/v1/users/{users['admin']}", json=body), 409, "CONFLICT")

    assert "admin" in problem["detail"]
    me = admin.get("/v1/auth/me")
    assert me.status_code == 200
    assert me.get_json()["roles"] == ["admin"]
    assert admin.get(f"/v1/users/{users['admin']}").get_json()["disabled"] is False


def test_an_admin_can_step_down_when_another_remains(
    admin: Any, app: Flask, users: dict[str, str]
) -> None:
    second = _create(admin, "admin-2", ["admin"]).get_json()
    # A disabled admin does not count as the remaining one.
    assert admin.patch(f"/v1/users/{second['id']}", json={"disabled": True}).status_code == 200
    _problem(admin.patch(f"/v1/users/{users['admin']}", json={"roles": ["user"]}), 409, "CONFLICT")
    assert admin.patch(f"/v1/users/{second['id']}", json={"disabled": False}).status_code == 200

    response = admin.patch(f"/v1/users/{users['admin']}", json={"roles": ["user"]})

    assert response.status_code == 200
    assert response.get_json()["roles"] == ["user"]
    _problem(admin.get("/v1/users"), 403, "FORBIDDEN")


def test_a_failed_update_changes_nothing(admin: Any, users: dict[str, str]) -> None:
    # The password and roles of one PATCH are applied together or not at all.
    body = {"roles": ["viewer"], "password": NEW_PASSWORD, "current_password": PASSWORD}
    _problem(admin.patch(f"/v1/users/{users['admin']}", json=body), 409, "CONFLICT")

    assert admin.get(f"/v1/users/{users['admin']}").get_json()["roles"] == ["admin"]


def test_patch_with_a_non_json_body_is_415(admin: Any, users: dict[str, str]) -> None:
    response = admin.patch(
        f"/v1/users/{users['viewer']}", data="disabled=true", content_type="text/plain"
    )

    _problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_two_admins_demoting_each_other_at_once_leave_one_admin(tmp_path: Any) -> None:
    """A race the rolled-back fixture cannot show: two transactions on real PostgreSQL, each
    demoting the other admin. Without serialization both see the other as the remaining admin
    and both commit; with it exactly one wins and the other gets the 409."""
    import threading

    import psycopg
    from flask_migrate import upgrade
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from app import create_app
    from app.auth.identity import Identity
    from app.auth.permissions import permissions_of
    from app.extensions import db
    from app.users.errors import LastAdminError
    from app.users.models import User
    from app.users.service import create_user, update_user
    from tests.conftest import PG_ADMIN_URL, _worker

    name = f"llmreg_race_{_worker()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin_conn:
        admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin_conn.execute(f'CREATE DATABASE "{name}"')
    race_app = create_app(
        make_settings(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", tmp_path)
    )
    try:
        with race_app.app_context():
            upgrade()
            ids = [create_user(f"racer-{i}", PASSWORD, ["admin"]).id for i in (1, 2)]
        both_ready = threading.Barrier(2)

        def wait_for_the_other(_session: Any) -> None:
            # A broken barrier means the other one is waiting for us: go on.
            with contextlib.suppress(threading.BrokenBarrierError):
                both_ready.wait(timeout=1.5)

        outcomes: list[str] = []

        def demote(actor_id: str, target_id: str) -> None:
            actor = Identity(actor_id, "racer", "admin", ("admin",), permissions_of("admin"))
            with race_app.app_context():
                db.session.get(User, actor_id)  # as authentication loads the caller
                try:
                    update_user(target_id, {"roles": ["viewer"]}, actor)
                    outcomes.append("demoted")
                except LastAdminError:
                    outcomes.append("refused")

        event.listen(Session, "before_commit", wait_for_the_other)
        try:
            threads = [
                threading.Thread(target=demote, args=(ids[0], ids[1])),
                threading.Thread(target=demote, args=(ids[1], ids[0])),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=20)
        finally:
            event.remove(Session, "before_commit", wait_for_the_other)

        assert sorted(outcomes) == ["demoted", "refused"]
        with race_app.app_context():
            roles = [u.roles for u in db.session.scalars(select(User)).all()]
            db.engine.dispose()
        assert sorted(roles) == [["admin"], ["viewer"]]
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin_conn:
            admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
