"""The role -> permission matrix of CONTRACT.md §2, as one declarative table.

Roles inherit upwards: each role holds its own permissions plus those of every role below it.
``*:*`` (admin) grants everything.
"""

from __future__ import annotations

ROLES: tuple[str, ...] = ("viewer", "user", "developer", "admin")  # lowest to highest

ROLE_ADDS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"asset:read", "dependency:read", "job:read", "event:read"}),
    "user": frozenset({"asset:write"}),
    "developer": frozenset({"asset:delete", "policy:write", "apikey:create"}),
    "admin": frozenset({"*:*"}),
}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    role: frozenset().union(*(ROLE_ADDS[lower] for lower in ROLES[: i + 1]))
    for i, role in enumerate(ROLES)
}


def highest_role(roles: list[str] | tuple[str, ...]) -> str | None:
    """A user's effective role: the highest one assigned (None when none is)."""
    ranked = [ROLES.index(role) for role in roles if role in ROLES]
    return ROLES[max(ranked)] if ranked else None


def lower_role(a: str, b: str) -> str:
    return a if ROLES.index(a) <= ROLES.index(b) else b


def permissions_of(role: str | None) -> frozenset[str]:
    return ROLE_PERMISSIONS.get(role or "", frozenset())


def allows(permissions: frozenset[str], needed: str) -> bool:
    """True when ``permissions`` grant ``needed`` (exact, ``resource:*`` or ``*:*``)."""
    if needed in permissions or "*:*" in permissions:
        return True
    resource, _, _action = needed.partition(":")
    return f"{resource}:*" in permissions


def expanded_permissions(role: str | None) -> list[str]:
    """Every concrete permission of a role, for ``/v1/auth/me`` (``*:*`` listed as well)."""
    perms = set(permissions_of(role))
    if "*:*" in perms:
        perms |= ALL_PERMISSIONS
    return sorted(perms)


ALL_PERMISSIONS: frozenset[str] = frozenset(
    {"user:manage", "compliance:scan", "asset:force_delete", "asset:read_deleted"}
).union(*ROLE_ADDS.values()) - {"*:*"}
