"""Python client and ``llmreg`` command line for LLM Registry.

``Client`` speaks every endpoint of the API; errors are ``llmreg.errors`` exceptions keyed by
the problem's ``code``; documents are the typed dictionaries of ``llmreg.types``.
"""

from llmreg._version import __version__
from llmreg.client import Client, PushResult, parse_dependency, parse_ref
from llmreg.config import ConfigStore, Credentials
from llmreg.errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    InvalidInputError,
    JobTimeoutError,
    LlmregError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RateLimitError,
    RegistryError,
    RequestTimeoutError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
    ValidationFailedError,
)

__all__ = [
    "AlreadyExistsError",
    "ChecksumMismatchError",
    "Client",
    "ConfigStore",
    "ConflictError",
    "ConnectionFailedError",
    "Credentials",
    "ForbiddenError",
    "InvalidInputError",
    "JobTimeoutError",
    "LlmregError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "PushResult",
    "RateLimitError",
    "RegistryError",
    "RequestTimeoutError",
    "ServerError",
    "UnauthorizedError",
    "UnavailableError",
    "ValidationFailedError",
    "__version__",
    "parse_dependency",
    "parse_ref",
]
