"""Request and response schemas of the asset endpoints (CONTRACT.md §4 and §6)."""

from __future__ import annotations

import re
from typing import Any

import marshmallow as ma
from license_expression import get_spdx_licensing

from app.assets.models import (
    ASSET_TYPES,
    CHECKSUM_ALGORITHMS,
    COMPLIANCE_STATUSES,
    STATUSES,
)
from app.assets.semver import InvalidVersionError, parse_range, parse_version
from app.policies.cel import CelCompileError, compile_expression
from app.schemas import PagingArgsSchema, StrictBoolean, UTCDateTime, page_schema

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63})?$"
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/=+-]{0,63}$"
ANNOTATION_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
HEX64 = r"^[0-9a-fA-F]{64}$"
MAX_TAGS = 64
MAX_ANNOTATIONS = 128
MAX_ANNOTATION_VALUE = 4096
MAX_DEPENDENCIES = 256
GOVERNED_TYPES = ("model", "pipeline", "dataset")
SORTS = ("created_at", "updated_at", "name", "version", "size_bytes")

_licensing = get_spdx_licensing()


class FullMatch(ma.validate.Regexp):
    """``Regexp`` over the whole value: marshmallow's uses ``re.match``, whose ``$`` also matches
    before a trailing newline, so ``"model\\n"`` would pass the name pattern."""

    def __init__(self, regex: str, *, error: str | None = None) -> None:
        super().__init__(regex, error=error)
        self._pattern = re.compile(regex)

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str) or self._pattern.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


def _validate_version(value: str) -> None:
    try:
        parse_version(value)
    except InvalidVersionError as exc:
        raise ma.ValidationError(str(exc)) from None


def _validate_range(value: str) -> None:
    try:
        parse_range(value)
    except InvalidVersionError as exc:
        raise ma.ValidationError(str(exc)) from None


class License(ma.fields.String):
    """An SPDX license id or expression (``MIT``, ``Apache-2.0 OR MIT``, ``LicenseRef-x``),
    stored in SPDX's own spelling."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text or len(text) > 256:
            raise ma.ValidationError("must be an SPDX license identifier of 1-256 characters")
        if re.fullmatch(r"LicenseRef-[A-Za-z0-9.-]+", text):
            return text  # a custom license, as SPDX spells them
        try:
            result = _licensing.validate(text)
            valid = not result.errors and bool(result.normalized_expression)
        except Exception:  # the library raises on some malformed expressions ("MIT/Apache-2.0")
            valid = False
        if not valid:
            raise ma.ValidationError(
                f"{text!r} is not an SPDX license identifier or expression (see spdx.org/licenses)"
            )
        return str(result.normalized_expression)


class Annotations(ma.fields.Dict):
    """``{str: str}`` with bounded keys and values; with ``allow_null_values`` a value may be
    null (PATCH: delete that key)."""

    def __init__(self, allow_null_values: bool = False, **kwargs: Any) -> None:
        super().__init__(keys=ma.fields.String(), **kwargs)
        self.allow_null_values = allow_null_values

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = super()._deserialize(  # type: ignore[no-untyped-call]
            value, attr, data, **kwargs
        )
        if len(result) > MAX_ANNOTATIONS:
            raise ma.ValidationError(f"at most {MAX_ANNOTATIONS} annotations")
        errors: dict[str, list[str]] = {}
        for key, item in result.items():
            if not ANNOTATION_KEY_PATTERN.fullmatch(key):
                errors[key] = ["key must be 1-128 of A-Z a-z 0-9 . _ / -, starting alphanumeric"]
            elif item is None and self.allow_null_values:
                continue
            elif not isinstance(item, str):
                errors[key] = ["must be a string" + (" or null" if self.allow_null_values else "")]
            elif len(item) > MAX_ANNOTATION_VALUE:
                errors[key] = [f"must be at most {MAX_ANNOTATION_VALUE} characters"]
        if errors:
            raise ma.ValidationError(errors)
        return result


def _tags_field(**kwargs: Any) -> ma.fields.List[Any]:
    def unique(tags: list[str]) -> None:
        if len(set(tags)) != len(tags):
            raise ma.ValidationError("tags must not repeat")

    return ma.fields.List(
        ma.fields.String(
            validate=FullMatch(
                TAG_PATTERN,
                error="must be 1-64 of A-Z a-z 0-9 . _ : / = + -, starting alphanumeric",
            )
        ),
        validate=[ma.validate.Length(max=MAX_TAGS), unique],
        **kwargs,
    )


class ChecksumSchema(ma.Schema):
    algorithm = ma.fields.String(required=True, validate=ma.validate.OneOf(CHECKSUM_ALGORITHMS))
    value = ma.fields.String(
        required=True,
        validate=FullMatch(HEX64, error="must be 64 hexadecimal characters"),
    )

    @ma.post_load
    def lower(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["value"] = data["value"].lower()
        return data


class StorageSchema(ma.Schema):
    uri = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=2048))


class ProvenanceSchema(ma.Schema):
    source_repo = ma.fields.String(validate=ma.validate.Length(min=1, max=2048), allow_none=True)
    commit_hash = ma.fields.String(
        allow_none=True,
        validate=FullMatch(r"^[0-9a-fA-F]{7,64}$", error="must be 7-64 hexadecimal characters"),
    )
    build_id = ma.fields.String(validate=ma.validate.Length(min=1, max=256), allow_none=True)
    author = ma.fields.String(validate=ma.validate.Length(min=1, max=256), allow_none=True)
    created_at = UTCDateTime(allow_none=True)
    build_metadata = ma.fields.Dict(keys=ma.fields.String(), allow_none=True)


class DependencyRefSchema(ma.Schema):
    """Either ``{id}`` or ``{name, version: <npm range>, asset_type?}``."""

    id = ma.fields.String(validate=FullMatch(ULID_PATTERN, error="must be an asset id"))
    name = ma.fields.String(validate=FullMatch(NAME_PATTERN, error="must be a valid asset name"))
    version = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=256), _validate_range],
        metadata={"description": "npm-style range: ^1.2.0, ~1.2, >=1.0.0 <2.0.0, 1.4.2, *"},
    )
    asset_type = ma.fields.String(validate=ma.validate.OneOf(ASSET_TYPES))

    @ma.validates_schema
    def one_form(self, data: dict[str, Any], **_: Any) -> None:
        if "id" in data:
            extra = sorted(set(data) - {"id"})
            if extra:
                raise ma.ValidationError(
                    "an {id} reference takes no other field", field_name=extra[0]
                )
            return
        missing = [f for f in ("name", "version") if f not in data]
        if missing:
            raise ma.ValidationError(
                {f: ["required unless the dependency is given by id"] for f in missing}
            )


def _unique_dependencies(refs: list[dict[str, Any]]) -> None:
    seen = set()
    for ref in refs:
        key = ref.get("id") or ref.get("name")
        if key in seen:
            raise ma.ValidationError(f"{key} is listed twice")
        seen.add(key)


class AppliesToSchema(ma.Schema):
    asset_types = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(GOVERNED_TYPES)),
        validate=ma.validate.Length(max=len(GOVERNED_TYPES)),
    )
    tags = _tags_field()


RULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _names_unique(label: str) -> Any:
    def check(items: list[dict[str, Any]]) -> None:
        names = [item.get("name") for item in items]
        if len(set(names)) != len(names):
            raise ma.ValidationError(f"{label} names must be unique")

    return check


class PolicyRuleSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=FullMatch(RULE_NAME))
    expression = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=4096))
    severity = ma.fields.String(required=True, validate=ma.validate.OneOf(("deny", "warn")))
    message = ma.fields.String(validate=ma.validate.Length(max=1024))


class PolicySpecSchema(ma.Schema):
    applies_to = ma.fields.Nested(AppliesToSchema)
    rules = ma.fields.List(
        ma.fields.Nested(PolicyRuleSchema),
        required=True,
        validate=[ma.validate.Length(min=1, max=256), _names_unique("rule")],
    )


class ExpressionCaseSchema(ma.Schema):
    kind = ma.fields.String(required=True, validate=ma.validate.Equal("expression"))
    name = ma.fields.String(required=True, validate=FullMatch(RULE_NAME))
    expression = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=4096))


class HttpCaseSchema(ma.Schema):
    kind = ma.fields.String(required=True, validate=ma.validate.Equal("http"))
    name = ma.fields.String(required=True, validate=FullMatch(RULE_NAME))
    method = ma.fields.String(
        load_default="POST",
        validate=ma.validate.OneOf(("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")),
    )
    path = ma.fields.String(
        required=True,
        validate=FullMatch(r"^/[^\s]*$", error="must be a path starting with /"),
    )
    body = ma.fields.Raw(allow_none=True)
    expect = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=4096))


class TestCase(ma.fields.Field[Any]):
    """A test case, validated by the schema of its ``kind``."""

    _schemas = {"expression": ExpressionCaseSchema, "http": HttpCaseSchema}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ma.ValidationError("must be an object")
        schema = self._schemas.get(str(value.get("kind")))
        if schema is None:
            raise ma.ValidationError({"kind": [f"must be one of {', '.join(self._schemas)}"]})
        return schema().load(value)


class TestSuiteSpecSchema(ma.Schema):
    applies_to = ma.fields.Nested(AppliesToSchema)
    gating = StrictBoolean(load_default=True)
    timeout_seconds = ma.fields.Integer(load_default=30, validate=ma.validate.Range(min=1, max=600))
    cases = ma.fields.List(
        TestCase(),
        required=True,
        validate=[ma.validate.Length(min=1, max=256), _names_unique("case")],
    )


def _spec_expressions(spec: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    """``(section, index, field, owner)`` of each CEL expression in a policy or test-suite spec."""
    found = []
    for section, label in (("rules", "rule"), ("cases", "case")):
        items = spec.get(section)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if not isinstance(item, dict):
                continue
            if section == "rules":
                field: str | None = "expression"
            else:
                field = {"expression": "expression", "http": "expect"}.get(str(item.get("kind")))
            name = item.get("name")
            owner = f"{label} {name!r}" if isinstance(name, str) else f"{label} {index}"
            if field is not None:
                found.append((section, index, field, owner))
    return found


def _expression_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Compile errors of the spec's CEL expressions (§6: 422 naming the rule or case), nested
    as marshmallow nests errors: ``{"rules": {0: {"expression": [message]}}}``. Values the spec
    schema rejects anyway (not a string, empty, too long) are left to it."""
    errors: dict[str, Any] = {}
    for section, index, field, owner in _spec_expressions(spec):
        text = spec[section][index].get(field)
        if not isinstance(text, str) or not 1 <= len(text) <= 4096:
            continue
        try:
            compile_expression(text)
        except CelCompileError as exc:
            errors.setdefault(section, {})[index] = {
                field: [f"{field} of {owner} does not compile: {exc.message}"]
            }
    return errors


def _merge_errors(into: dict[Any, Any], extra: dict[Any, Any]) -> None:
    for key, value in extra.items():
        current = into.get(key)
        if current is None:
            into[key] = value
        elif isinstance(current, dict) and isinstance(value, dict):
            _merge_errors(current, value)
        elif isinstance(current, list):
            current.extend(value if isinstance(value, list) else [value])
        else:
            into[key] = [current, value]


_SPEC_SCHEMAS: dict[str, type[ma.Schema]] = {
    "policy": PolicySpecSchema,
    "test_suite": TestSuiteSpecSchema,
}


class AssetCreateSchema(ma.Schema):
    asset_type = ma.fields.String(required=True, validate=ma.validate.OneOf(ASSET_TYPES))
    name = ma.fields.String(
        required=True,
        validate=FullMatch(
            NAME_PATTERN,
            error="must be lower-case a-z 0-9 . _ - (1-64 characters, starting alphanumeric), "
            "optionally prefixed by one 'org/' namespace",
        ),
    )
    version = ma.fields.String(
        required=True,
        validate=[ma.validate.Length(min=5, max=256), _validate_version],
        metadata={"description": "SemVer 2.0, e.g. 1.4.0 or 2.0.0-rc.1+build.5"},
    )
    description = ma.fields.String(validate=ma.validate.Length(max=10_000), allow_none=True)
    license = License(allow_none=True, metadata={"description": "SPDX license identifier"})
    tags = _tags_field(load_default=list)
    annotations = Annotations(load_default=dict)
    content_type = ma.fields.String(
        allow_none=True,
        validate=FullMatch(
            r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+( *;.{0,200})?$", error="must be a MIME type"
        ),
    )
    size_bytes = ma.fields.Integer(
        allow_none=True, strict=True, validate=ma.validate.Range(min=0, max=2**63 - 1)
    )
    checksum = ma.fields.Nested(ChecksumSchema, allow_none=True)
    storage = ma.fields.Nested(StorageSchema, allow_none=True)
    provenance = ma.fields.Nested(ProvenanceSchema, allow_none=True)
    dependencies = ma.fields.List(
        ma.fields.Nested(DependencyRefSchema),
        load_default=list,
        validate=[ma.validate.Length(max=MAX_DEPENDENCIES), _unique_dependencies],
    )
    spec = ma.fields.Dict(keys=ma.fields.String(), allow_none=True)

    @ma.validates_schema(skip_on_field_errors=False)
    def check_spec_and_content(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, Any] = {}
        schema = _SPEC_SCHEMAS.get(data.get("asset_type", ""))
        spec = data.get("spec")
        if schema is not None:
            if spec is None:
                errors["spec"] = [f"is required for a {data['asset_type']}"]
            else:
                spec_errors = schema().validate(spec)
                _merge_errors(spec_errors, _expression_errors(spec))
                if spec_errors:
                    errors["spec"] = spec_errors
        if data.get("storage") and not data.get("checksum"):
            errors["checksum"] = ["is required when storage is given"]
        if errors:
            raise ma.ValidationError(errors)

    @ma.post_load
    def load_spec(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        schema = _SPEC_SCHEMAS.get(data["asset_type"])
        if schema is not None and data.get("spec") is not None:
            data["spec"] = schema().load(data["spec"])
        return data


class AssetUpdateSchema(ma.Schema):
    description = ma.fields.String(validate=ma.validate.Length(max=10_000), allow_none=True)
    license = License(allow_none=True)
    tags = _tags_field()
    annotations = Annotations(allow_null_values=True)
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))

    IMMUTABLE = ("name", "version", "asset_type", "checksum", "storage", "spec")

    @ma.pre_load
    def reject_immutable(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict):
            present = [field for field in self.IMMUTABLE if field in data]
            if present:
                raise ma.ValidationError({field: ["is immutable"] for field in present})
        return data


# ---- responses -------------------------------------------------------------------------------


class DependencySchema(ma.Schema):
    id = ma.fields.String(attribute="ref_id", allow_none=True)
    name = ma.fields.String(allow_none=True)
    asset_type = ma.fields.String(allow_none=True)
    version = ma.fields.String(attribute="version_range", allow_none=True)
    resolved_id = ma.fields.String(allow_none=True)
    resolved_version = ma.fields.String(allow_none=True)


class ComplianceSummarySchema(ma.Schema):
    status = ma.fields.String(validate=ma.validate.OneOf(COMPLIANCE_STATUSES))
    evaluated_at = UTCDateTime(allow_none=True)
    violations = ma.fields.List(ma.fields.Dict())


class JobRefSchema(ma.Schema):
    id = ma.fields.String()
    status = ma.fields.String()
    href = ma.fields.String()


class AssetSchema(ma.Schema):
    id = ma.fields.String()
    asset_type = ma.fields.String()
    name = ma.fields.String()
    version = ma.fields.String()
    description = ma.fields.String(allow_none=True)
    license = ma.fields.String(allow_none=True)
    tags = ma.fields.List(ma.fields.String())
    annotations = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    content_type = ma.fields.String(allow_none=True)
    size_bytes = ma.fields.Integer(allow_none=True)
    checksum = ma.fields.Method("_checksum", metadata={"type": "object", "nullable": True})
    storage = ma.fields.Method("_storage", metadata={"type": "object", "nullable": True})
    provenance = ma.fields.Dict(allow_none=True)
    dependencies = ma.fields.List(ma.fields.Nested(DependencySchema), attribute="dependency_rows")
    spec = ma.fields.Dict(allow_none=True)
    artifact = ma.fields.Dict(allow_none=True)
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))
    rejection = ma.fields.Dict(allow_none=True)
    compliance = ma.fields.Method("_compliance", metadata={"type": "object"})
    created_by = ma.fields.String()
    created_at = UTCDateTime()
    updated_at = UTCDateTime()
    deprecated_at = UTCDateTime(allow_none=True)
    deleted_at = UTCDateTime(
        allow_none=True, metadata={"description": "Set only on deleted assets (admins)"}
    )

    def _checksum(self, asset: Any) -> dict[str, str] | None:
        if asset.checksum_algorithm is None:
            return None
        return {"algorithm": asset.checksum_algorithm, "value": asset.checksum_value}

    def _storage(self, asset: Any) -> dict[str, str] | None:
        return None if asset.storage_uri is None else {"uri": asset.storage_uri}

    def _compliance(self, asset: Any) -> dict[str, Any]:
        summary = asset.compliance or {}
        return {
            "status": asset.compliance_status,
            "evaluated_at": summary.get("evaluated_at"),
            "violations": summary.get("violations", []),
        }


class AssetRegisteredSchema(AssetSchema):
    job = ma.fields.Nested(JobRefSchema)


class AssetQueryArgsSchema(PagingArgsSchema):
    asset_type = ma.fields.String(validate=ma.validate.OneOf(ASSET_TYPES))
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=129))
    tag = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(min=1, max=64)),
        metadata={"description": "Repeatable; every tag must match"},
    )
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))
    compliance = ma.fields.String(validate=ma.validate.OneOf(COMPLIANCE_STATUSES))
    author = ma.fields.String(
        validate=ma.validate.Length(min=1, max=256),
        metadata={"description": "provenance.author, or the user who registered the asset"},
    )
    q = ma.fields.String(
        validate=ma.validate.Length(min=1, max=256),
        metadata={"description": "Case-insensitive text search over name and description"},
    )
    created_after = UTCDateTime()
    created_before = UTCDateTime()
    sort = ma.fields.String(load_default="created_at", validate=ma.validate.OneOf(SORTS))
    order = ma.fields.String(
        validate=ma.validate.OneOf(("asc", "desc")),
        metadata={"description": "Default desc (asc for sort=name)"},
    )
    include_deleted = ma.fields.Boolean(load_default=False, metadata={"description": "Admins only"})


class VersionQueryArgsSchema(PagingArgsSchema):
    pass


class ReadArgsSchema(ma.Schema):
    include_deleted = ma.fields.Boolean(load_default=False, metadata={"description": "Admins only"})


class DeleteArgsSchema(ma.Schema):
    force = ma.fields.Boolean(
        load_default=False, metadata={"description": "Admins: delete despite active dependents"}
    )


AssetPageSchema = page_schema(AssetSchema, "AssetPage")
