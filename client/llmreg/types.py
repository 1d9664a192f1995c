"""The documents of the API (CONTRACT.md), as typed dictionaries.

They are the server's JSON as it arrived (no copy, no validation), so ``json.dumps`` of any of
them is exactly what the server said; the types are there for editors and mypy. Servers may add
fields: read unknown ones with ``.get``.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar

T = TypeVar("T")

AssetType = Literal["model", "pipeline", "dataset", "policy", "test_suite"]
ASSET_TYPES: tuple[AssetType, ...] = ("model", "pipeline", "dataset", "policy", "test_suite")


class Page(TypedDict, Generic[T]):
    items: list[T]
    total: int
    limit: int
    next_cursor: str | None


class UserRef(TypedDict):
    id: str
    username: str
    roles: list[str]


class Me(UserRef):
    permissions: list[str]


class User(UserRef):
    disabled: NotRequired[bool]
    created_at: NotRequired[str]


class TokenPair(TypedDict):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class LoginResult(TokenPair):
    user: UserRef


class ApiKey(TypedDict):
    id: str
    name: str
    prefix: str
    role: str
    created_at: str
    expires_at: str | None
    signing: NotRequired[bool]
    last_used_at: NotRequired[str | None]


class CreatedApiKey(ApiKey):
    key: str
    signing_secret: NotRequired[str]


class Blob(TypedDict):
    digest: str
    size_bytes: int
    uri: str


class Checksum(TypedDict):
    algorithm: Literal["SHA256", "SHA3_256", "BLAKE3"]
    value: str


class Storage(TypedDict):
    uri: str


class Dependency(TypedDict):
    id: NotRequired[str | None]
    name: str
    asset_type: str
    version: str | None
    resolved_id: str | None
    resolved_version: str | None


class Rejection(TypedDict):
    code: str
    message: str
    step: str


class Compliance(TypedDict):
    status: Literal["compliant", "warning", "non_compliant", "unknown"]
    evaluated_at: str | None
    violations: list[dict[str, Any]]


class Finding(TypedDict):
    severity: str
    message: str


class Artifact(TypedDict):
    format: str
    dtypes: list[str]
    tensor_count: int | None
    parameter_count: int | None
    architecture: NotRequired[str | None]
    context_length: NotRequired[int | None]
    findings: list[Finding]


class Asset(TypedDict):
    id: str
    asset_type: AssetType
    name: str
    version: str
    description: str | None
    license: str | None
    tags: list[str]
    annotations: dict[str, str]
    content_type: str | None
    size_bytes: int | None
    checksum: Checksum | None
    storage: Storage | None
    provenance: dict[str, Any] | None
    dependencies: list[Dependency]
    spec: dict[str, Any] | None
    artifact: Artifact | None
    status: Literal["pending", "validating", "active", "rejected", "deprecated", "archived"]
    rejection: Rejection | None
    compliance: Compliance
    created_by: str | None
    created_at: str
    updated_at: str
    deprecated_at: str | None


class JobRef(TypedDict):
    id: str
    status: str
    href: str


class RegisteredAsset(Asset):
    """The 202 answer to a registration: the pending asset and the job that validates it."""

    job: JobRef


class JobStep(TypedDict):
    name: str
    status: Literal["pending", "running", "passed", "failed", "skipped"]
    started_at: str | None
    finished_at: str | None
    detail: str | None


class JobError(TypedDict):
    code: str
    message: str


class Job(TypedDict):
    id: str
    kind: Literal["registration", "compliance_scan"]
    asset_id: str | None
    status: Literal["queued", "running", "succeeded", "failed"]
    steps: list[JobStep]
    error: JobError | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None


class ScanStarted(TypedDict):
    job: JobRef


class GraphNode(TypedDict):
    id: str
    asset_type: str
    name: str
    version: str
    status: str
    depth: int


# "from" is a keyword, hence the functional form.
GraphEdge = TypedDict("GraphEdge", {"from": str, "to": str, "constraint": str | None})


class Graph(TypedDict):
    root: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool


class ComplianceResult(TypedDict):
    policy_id: str
    policy_name: str
    policy_version: str
    rule: str
    severity: Literal["deny", "warn"]
    passed: bool
    message: str | None


class ComplianceReport(TypedDict):
    asset_id: str
    status: str
    evaluated_at: str | None
    results: list[ComplianceResult]


class TestCaseResult(TypedDict):
    name: str
    status: str
    duration_ms: int | None
    message: str | None


class TestRun(TypedDict):
    id: str
    suite_id: str
    suite_name: str
    suite_version: str
    status: Literal["passed", "failed", "error"]
    cases: list[TestCaseResult]
    started_at: str | None
    finished_at: str | None


class Event(TypedDict):
    """A CloudEvents 1.0 document as ``GET /v1/events`` and NATS carry it."""

    specversion: str
    id: str
    source: str
    type: str
    subject: NotRequired[str]
    time: str
    data: dict[str, Any]
    datacontenttype: NotRequired[str]
    sequence: NotRequired[str]
    actor: NotRequired[str]
    requestid: NotRequired[str]
    traceid: NotRequired[str]


class Health(TypedDict):
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    checks: dict[str, Any]


class Version(TypedDict):
    version: str
    api_version: str
    git_sha: str | None
    build_timestamp: str | None
