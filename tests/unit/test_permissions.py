"""The role -> permission matrix of CONTRACT.md §2."""

from __future__ import annotations

import pytest

from app.auth.permissions import (
    ALL_PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLES,
    allows,
    expanded_permissions,
    highest_role,
    lower_role,
    permissions_of,
)

VIEWER = {"asset:read", "dependency:read", "job:read", "event:read"}
USER = VIEWER | {"asset:write"}
DEVELOPER = USER | {"asset:delete", "policy:write", "apikey:create"}


def test_roles_are_ordered_lowest_first() -> None:
    assert ROLES == ("viewer", "user", "developer", "admin")


@pytest.mark.parametrize(
    ("role", "expected"), [("viewer", VIEWER), ("user", USER), ("developer", DEVELOPER)]
)
def test_each_role_holds_its_own_and_every_lower_roles_permissions(
    role: str, expected: set[str]
) -> None:
    assert ROLE_PERMISSIONS[role] == expected
    assert set(expanded_permissions(role)) == expected


def test_admin_holds_everything() -> None:
    assert ROLE_PERMISSIONS["admin"] == DEVELOPER | {"*:*"}
    for permission in ALL_PERMISSIONS | {"anything:at_all", "user:manage"}:
        assert allows(ROLE_PERMISSIONS["admin"], permission)
    expanded = set(expanded_permissions("admin"))
    assert expanded >= DEVELOPER | {"user:manage", "compliance:scan", "*:*"}
    assert expanded_permissions("admin") == sorted(expanded)


@pytest.mark.parametrize(
    ("role", "permission", "allowed"),
    [
        ("viewer", "asset:read", True),
        ("viewer", "asset:write", False),
        ("viewer", "user:manage", False),
        ("user", "asset:write", True),
        ("user", "asset:delete", False),
        ("user", "policy:write", False),
        ("developer", "asset:delete", True),
        ("developer", "apikey:create", True),
        ("developer", "user:manage", False),
        ("developer", "compliance:scan", False),
        ("developer", "asset:force_delete", False),
        ("admin", "user:manage", True),
    ],
)
def test_allows(role: str, permission: str, allowed: bool) -> None:
    assert allows(ROLE_PERMISSIONS[role], permission) is allowed


def test_a_resource_wildcard_grants_only_its_resource() -> None:
    granted = frozenset({"asset:*"})

    assert allows(granted, "asset:delete")
    assert not allows(granted, "user:manage")
    assert not allows(granted, "assets:read")


def test_no_role_means_no_permission() -> None:
    assert permissions_of(None) == frozenset()
    assert permissions_of("root") == frozenset()
    assert expanded_permissions(None) == []
    assert not allows(permissions_of(None), "asset:read")


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["viewer"], "viewer"),
        (["viewer", "developer", "user"], "developer"),
        (["admin", "viewer"], "admin"),
        (["root", "user"], "user"),
        (["root"], None),
        ([], None),
    ],
)
def test_the_effective_role_is_the_highest_known_one(
    roles: list[str], expected: str | None
) -> None:
    assert highest_role(roles) == expected


def test_lower_role() -> None:
    assert lower_role("admin", "viewer") == "viewer"
    assert lower_role("user", "developer") == "user"
    assert lower_role("developer", "developer") == "developer"
