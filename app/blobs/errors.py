from __future__ import annotations

from app.errors import NotFoundError, RegistryError


class BlobNotFoundError(NotFoundError):
    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is not in the store")


class RangeNotSatisfiableError(RegistryError):
    status, code = 416, "RANGE_NOT_SATISFIABLE"
