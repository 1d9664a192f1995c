"""``flask --app wsgi users create USERNAME --role admin`` (CONTRACT.md §2)."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

from app.auth.permissions import ROLES
from app.errors import RegistryError
from app.users import service
from app.users.schemas import PASSWORD_MIN, UserCreateSchema

users_cli = AppGroup("users", help="Manage registry users.")


@users_cli.command("create")
@click.argument("username")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    default=("user",),
    show_default=True,
    help="Role to grant (repeatable).",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create_user_command(username: str, roles: tuple[str, ...], password_stdin: bool) -> None:
    """Create USERNAME; prompts for the password unless --password-stdin is given."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    errors = UserCreateSchema().validate(
        {"username": username, "password": password, "roles": list(roles)}
    )
    if errors:
        for field, messages in errors.items():
            click.echo(f"error: {field}: {' '.join(map(str, messages))}", err=True)
        if "password" in errors:
            click.echo(f"(passwords need at least {PASSWORD_MIN} characters)", err=True)
        raise SystemExit(2)
    try:
        user = service.create_user(username, password, list(roles))
    except RegistryError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        raise SystemExit(1) from None
    click.echo(f"created user {user.username} ({user.id}) with roles {', '.join(user.roles)}")
