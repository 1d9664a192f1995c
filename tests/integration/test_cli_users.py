"""``flask --app wsgi users create USERNAME --role ROLE`` from the shell (CONTRACT.md §2)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import PASSWORD, login

pytestmark = pytest.mark.integration


def _run(app: Flask, *args: str, stdin: str | None = None) -> Any:
    return app.test_cli_runner().invoke(args=["users", "create", *args], input=stdin)


def _count_users(app: Flask) -> int:
    from app.extensions import db
    from app.users.models import User

    return int(db.session.scalar(select(func.count()).select_from(User)) or 0)


def test_create_an_admin_from_stdin_then_log_in(app: Flask, client: FlaskClient) -> None:
    result = _run(app, "root-admin", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")

    assert result.exit_code == 0, result.output
    assert "root-admin" in result.output
    assert PASSWORD not in result.output
    me = login(client, "root-admin").get("/v1/auth/me").get_json()
    assert me["roles"] == ["admin"]
    assert "user:manage" in me["permissions"]


def test_prompted_password_with_confirmation(app: Flask, client: FlaskClient) -> None:
    result = _run(app, "prompted", "--role", "viewer", stdin=f"{PASSWORD}\n{PASSWORD}\n")

    assert result.exit_code == 0, result.output
    assert login(client, "prompted").get("/v1/auth/me").get_json()["roles"] == ["viewer"]


def test_several_roles_and_the_default(app: Flask, client: FlaskClient) -> None:
    both = _run(
        app,
        "two-roles",
        "--role",
        "viewer",
        "--role",
        "developer",
        "--password-stdin",
        stdin=PASSWORD,
    )
    default = _run(app, "plain", "--password-stdin", stdin=PASSWORD)

    assert both.exit_code == 0 and default.exit_code == 0, (both.output, default.output)
    assert login(client, "two-roles").user["roles"] == ["viewer", "developer"]
    assert login(client, "plain").user["roles"] == ["user"]


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("weak", "--role", "admin", "--password-stdin"), "short\n"),
        (("empty", "--role", "admin", "--password-stdin"), "\n"),
        (("nothing", "--role", "admin", "--password-stdin"), ""),
        (("Bad Name", "--role", "admin", "--password-stdin"), PASSWORD + "\n"),
        (("rolling", "--role", "root", "--password-stdin"), PASSWORD + "\n"),
        (("mismatch", "--role", "admin"), f"{PASSWORD}\nsomething else\n\n\n"),
    ],
    ids=["short-password", "empty-password", "no-input", "bad-username", "bad-role", "mismatch"],
)
def test_bad_input_fails_and_creates_no_user(
    app: Flask, client: FlaskClient, args: tuple[str, ...], stdin: str
) -> None:
    result = _run(app, *args, stdin=stdin)

    assert result.exit_code != 0, result.output
    assert _count_users(app) == 0
    response = client.post("/v1/auth/login", json={"username": args[0], "password": PASSWORD})
    assert response.status_code in (401, 422)


def test_an_existing_username_fails(app: Flask, users: dict[str, str]) -> None:
    result = _run(app, "admin-1", "--role", "viewer", "--password-stdin", stdin=PASSWORD)

    assert result.exit_code == 1
    assert "already exists" in result.output
    assert _count_users(app) == 4


def test_password_from_stdin_keeps_inner_spaces(app: Flask, client: FlaskClient) -> None:
    password = "  spaced out passphrase  "

    result = _run(app, "spacey", "--password-stdin", stdin=password + "\r\n")

    assert result.exit_code == 0, result.output
    login(client, "spacey", password)
