from __future__ import annotations

from typing import Any

from app.errors import AlreadyExistsError, ConflictError, NotFoundError, RegistryError


class AssetNotFoundError(NotFoundError):
    def __init__(self, what: str) -> None:
        super().__init__(f"asset {what} does not exist")


class AssetAlreadyExistsError(AlreadyExistsError):
    def __init__(self, name: str, version: str, asset_id: str | None) -> None:
        extra: dict[str, Any] = {"asset_id": asset_id} if asset_id else {}
        super().__init__(
            f"{name} {version} is already registered; (name, version) is unique forever, "
            "build metadata ignored: register a new version instead",
            **extra,
        )


class AssetTypeMismatchError(AlreadyExistsError):
    def __init__(self, name: str, existing: str, requested: str) -> None:
        super().__init__(f"the name {name} belongs to a {existing}; it cannot hold a {requested}")


class StatusTransitionError(ConflictError):
    def __init__(self, current: str, requested: str) -> None:
        super().__init__(
            f"cannot change status from {current} to {requested}: allowed are active <-> "
            "deprecated and active|deprecated -> archived"
        )


class HasDependentsError(RegistryError):
    status, code = 409, "HAS_DEPENDENTS"


class NoActiveVersionError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} has no active version (or no such name exists)")
