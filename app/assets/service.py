"""Asset use cases: register, read, list, update, delete (CONTRACT.md §4).

Each public function is one transaction: it commits its change together with the change's events
(outbox) and, for a registration, the job that the pipeline will run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app.assets.errors import (
    AssetAlreadyExistsError,
    AssetNotFoundError,
    AssetTypeMismatchError,
    HasDependentsError,
    NoActiveVersionError,
    StatusTransitionError,
)
from app.assets.models import (
    GOVERNANCE_TYPES,
    Asset,
    AssetDependency,
    AssetName,
    AssetTag,
)
from app.assets.semver import parse_version, sort_key, without_build
from app.auth.identity import Identity
from app.context import request_id_var
from app.db import DbSession, insert_ignoring_conflicts, insert_new, new_id, utcnow
from app.errors import (
    ConflictError,
    ForbiddenError,
    PreconditionFailedError,
    UnavailableError,
    ValidationFailedError,
)
from app.events.models import Event
from app.events.service import (
    NUMBERED_INSERT,
    insert_numbered,
    new_event,
    numbered_insert_params,
    record_event,
)
from app.extensions import db
from app.jobs.models import REGISTRATION_STEPS, Job, JobStep
from app.jobs.queue import RUN_REGISTRATION, enqueue_after_commit
from app.json import json_bytes
from app.paging import Page, SortKey, paginate
from app.stats.service import live_asset_total
from app.storage import BlobStore, StorageError, digest_key

# PATCH status transitions: current -> allowed targets.
TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"deprecated", "archived"}),
    "deprecated": frozenset({"active", "archived"}),
}
LIVE_DEPENDENT_STATUSES = ("pending", "validating", "active", "deprecated")


@dataclasses.dataclass(frozen=True)
class Registration:
    asset: Asset
    job: Job


def _check_governance(asset_type: str, actor: Identity) -> None:
    if asset_type in GOVERNANCE_TYPES and not actor.can("policy:write"):
        raise ForbiddenError(f"registering or changing a {asset_type} needs policy:write")


def _check_content(data: Mapping[str, Any], store: BlobStore) -> None:
    """Content is ``storage.uri`` inside our store, or a checksum naming a stored blob."""
    checksum, storage = data.get("checksum"), data.get("storage")
    if storage:
        if store.key_for_uri(storage["uri"]) is None:
            raise ValidationFailedError(
                {"storage.uri": [f"must point inside the registry's blob store {store.url}"]}
            )
    elif checksum:
        if checksum["algorithm"] != "SHA256":
            raise ValidationFailedError(
                {"checksum.algorithm": ["must be SHA256 when no storage.uri is given"]}
            )
        try:
            stored = store.exists(digest_key(checksum["value"]))
        except StorageError as exc:
            raise UnavailableError(f"the blob store is unavailable: {exc}") from None
        if not stored:
            raise ValidationFailedError(
                {
                    "checksum.value": [
                        "no blob with this SHA-256 is stored; upload it with POST /v1/blobs "
                        "or give storage.uri"
                    ]
                }
            )


# Built once: building a statement costs about what running it does.
_NAMES = cast(Table, AssetName.__table__)
_PINNED_TYPE = select(_NAMES.c.asset_type).where(_NAMES.c.name == bindparam("name"))


def _claim_name(session: DbSession, name: str, asset_type: str) -> None:
    """Pin the name to its first type; a concurrent first registration waits on the row.
    A name already pinned (every version after the first) costs one read."""
    connection = session.connection()  # a Core read: none of the ORM's execution needed
    existing = connection.execute(_PINNED_TYPE, {"name": name}).scalar()
    if existing is None:
        insert_ignoring_conflicts(
            session, AssetName, ["name"], name=name, asset_type=asset_type, created_at=utcnow()
        )
        existing = connection.execute(_PINNED_TYPE, {"name": name}).scalar()
    if existing != asset_type:
        raise AssetTypeMismatchError(name, str(existing), asset_type)


# PostgreSQL: a registration's rows, and the claim of its name, in one statement (one round
# trip and one statement to plan instead of six; about a sixth of the client CPU). The name is
# pinned to its first type as in ``_claim_name``; the asset and what hangs off it are inserted
# only when the pinned type is the asset's. The statement answers the pinned type, or NULL
# when another transaction pinned the name after this statement's snapshot was taken (the
# claim waited for it, and this snapshot cannot see its row): nothing was inserted, and the
# statement is run again with a new snapshot. Parent rows come first in one statement: the
# foreign keys are checked at its end. The event is numbered and inserted as
# ``NUMBERED_INSERT`` does it for any transaction.
_REGISTER_ROWS = """
WITH claim AS (
  INSERT INTO asset_names (name, asset_type, created_at)
  VALUES (%(name)s, %(asset_type)s, %(created_at)s)
  ON CONFLICT (name) DO NOTHING
  RETURNING asset_type
), pinned AS (
  SELECT coalesce(
    (SELECT asset_type FROM claim),
    (SELECT asset_type FROM asset_names WHERE name = %(name)s)
  ) AS asset_type
), asset AS (
  INSERT INTO assets (
    id, asset_type, name, version, version_key, version_sort, prerelease, description, license,
    annotations, content_type, size_bytes, checksum_algorithm, checksum_value, storage_uri,
    provenance, provenance_author, spec, status, compliance_status, created_by, created_at,
    updated_at, row_version)
  SELECT
    %(id)s, %(asset_type)s, %(name)s, %(version)s, %(version_key)s, %(version_sort)s,
    %(prerelease)s, %(description)s, %(license)s, %(annotations)s::jsonb, %(content_type)s,
    %(size_bytes)s, %(checksum_algorithm)s, %(checksum_value)s, %(storage_uri)s,
    %(provenance)s::jsonb, %(provenance_author)s, %(spec)s::jsonb, %(status)s,
    %(compliance_status)s, %(created_by)s, %(created_at)s, %(updated_at)s, %(row_version)s
  FROM pinned
  WHERE pinned.asset_type = %(asset_type)s
  RETURNING id
), tags AS (
  INSERT INTO asset_tags (asset_id, tag, position)
  SELECT asset.id, t.tag, t.n - 1
  FROM asset, unnest(%(tags)s::varchar[]) WITH ORDINALITY AS t(tag, n)
), dependencies AS (
  INSERT INTO asset_dependencies (asset_id, position, ref_id, name, asset_type, version_range)
  SELECT asset.id, d.n - 1, d.ref_id, d.name, d.asset_type, d.version_range
  FROM asset, unnest(
    %(dep_ref_ids)s::varchar[], %(dep_names)s::varchar[], %(dep_types)s::varchar[],
    %(dep_ranges)s::varchar[]
  ) WITH ORDINALITY AS d(ref_id, name, asset_type, version_range, n)
), job AS (
  INSERT INTO jobs (
    id, kind, asset_id, status, attempts, created_by, request_id, created_at, enqueued_at)
  SELECT
    %(job_id)s, %(job_kind)s, asset.id, %(job_status)s, 0, %(job_created_by)s,
    %(request_id)s, %(job_created_at)s, %(enqueued_at)s
  FROM asset
  RETURNING id
), steps AS (
  INSERT INTO job_steps (job_id, position, name, status)
  SELECT job.id, s.n - 1, s.name, 'pending'
  FROM job, unnest(%(steps)s::varchar[]) WITH ORDINALITY AS s(name, n)
), """
_REGISTER_EVENT = NUMBERED_INSERT.format(source="asset")  # numbered only with an asset
# Constant SQL, every value bound:
_REGISTER = _REGISTER_ROWS + _REGISTER_EVENT + " SELECT asset_type FROM pinned"  # noqa: S608


# The asset's columns that ``_REGISTER`` binds as they are (the JSON ones are bound as text).
_ASSET_COLUMNS = (
    "id",
    "asset_type",
    "name",
    "version",
    "version_key",
    "version_sort",
    "prerelease",
    "description",
    "license",
    "content_type",
    "size_bytes",
    "checksum_algorithm",
    "checksum_value",
    "storage_uri",
    "provenance_author",
    "status",
    "compliance_status",
    "created_by",
    "created_at",
    "updated_at",
    "row_version",
)


def _json_text(value: Any) -> str:
    # None as JSON null, as SQLAlchemy's JSON type (and so the SQLite path) stores it.
    return json_bytes(value).decode()


def _insert_registration(session: DbSession, asset: Asset, job: Job, event: Event) -> None:
    """Insert ``asset`` (with its tags and dependencies), ``job`` (with its steps) and
    ``event``, numbered, as ``_REGISTER`` does; ``AssetTypeMismatchError`` when the name is
    pinned to another type."""
    dependencies = asset.dependency_rows
    params = {
        **{column: getattr(asset, column) for column in _ASSET_COLUMNS},
        "annotations": _json_text(asset.annotations),
        "provenance": _json_text(asset.provenance),
        "spec": _json_text(asset.spec),
        "tags": [row.tag for row in asset.tag_rows],
        "dep_ref_ids": [row.ref_id for row in dependencies],
        "dep_names": [row.name for row in dependencies],
        "dep_types": [row.asset_type for row in dependencies],
        "dep_ranges": [row.version_range for row in dependencies],
        "job_id": job.id,
        "job_kind": job.kind,
        "job_status": job.status,
        "job_created_by": job.created_by,
        "request_id": job.request_id,
        "job_created_at": job.created_at,
        "enqueued_at": job.enqueued_at,
        "steps": [step.name for step in job.steps],
        **numbered_insert_params([event]),
    }
    connection = session.connection()
    pinned = None
    for _attempt in range(3):
        pinned = connection.exec_driver_sql(_REGISTER, params).scalar()
        if pinned is not None:
            break
    if pinned is None:
        raise ConflictError(f"the name {asset.name} is being claimed concurrently; retry")
    if pinned != asset.asset_type:
        raise AssetTypeMismatchError(asset.name, str(pinned), asset.asset_type)


def _visible_duplicate_id(session: DbSession, name: str, key: str, actor: Identity) -> str | None:
    row = session.execute(
        select(Asset.id, Asset.deleted_at).where(Asset.name == name, Asset.version_key == key)
    ).first()
    if row is None:
        return None
    return row.id if row.deleted_at is None or actor.can("asset:read_deleted") else ""


def register_asset(data: Mapping[str, Any], actor: Identity, store: BlobStore) -> Registration:
    """Record a new asset version as ``pending`` with its queued registration job (commits).

    Called by ``POST /v1/assets`` with a body the schema validated. Raises
    ``AssetAlreadyExistsError`` for a taken (name, version), also when a concurrent request
    took it first; ``AssetTypeMismatchError`` when the name holds another type;
    ``ValidationFailedError`` for content the store does not have.
    """
    _check_governance(data["asset_type"], actor)
    _check_content(data, store)
    session = db.session
    version = parse_version(data["version"])
    key = without_build(version)
    name = data["name"]
    try:
        # A taken (name, version) is refused by the unique constraint when the rows are
        # inserted (the IntegrityError branch answers 409), not looked up first.
        now = utcnow()
        checksum = data.get("checksum") or {}
        provenance = _provenance_document(data.get("provenance"))
        # Ids made here, so the asset, its job and the event go to the database in the one
        # flush at commit.
        asset = Asset(
            id=new_id(),
            asset_type=data["asset_type"],
            name=name,
            version=str(version),
            version_key=key,
            version_sort=sort_key(version),
            prerelease=bool(version.prerelease),
            description=data.get("description"),
            license=data.get("license"),
            annotations=dict(data.get("annotations") or {}),
            content_type=data.get("content_type"),
            size_bytes=data.get("size_bytes"),
            checksum_algorithm=checksum.get("algorithm"),
            checksum_value=checksum.get("value"),
            storage_uri=(data.get("storage") or {}).get("uri"),
            provenance=provenance,
            provenance_author=(provenance or {}).get("author"),
            spec=data.get("spec"),
            status="pending",
            compliance_status="unknown",
            created_by=actor.username,
            created_at=now,
            updated_at=now,
            row_version=1,
        )
        asset.tag_rows = [
            AssetTag(asset_id=asset.id, tag=t, position=i) for i, t in enumerate(data["tags"])
        ]
        asset.dependency_rows = _dependency_rows(session, asset.id, data["dependencies"])
        job = Job(
            id=new_id(),
            kind="registration",
            asset_id=asset.id,
            status="queued",
            created_by=actor.username,
            request_id=request_id_var.get(),
            created_at=now,
            enqueued_at=now,
        )
        job.steps = [
            JobStep(job_id=job.id, position=i, name=n) for i, n in enumerate(REGISTRATION_STEPS)
        ]
        # Rows inserted as they are, not through the unit of work (new rows: nothing cached or
        # loaded in this session can be stale); a taken (name, version) fails right here.
        event = new_event(
            "asset_registered",
            asset.id,
            {
                "name": name,
                "version": asset.version,
                "asset_type": asset.asset_type,
                "job_id": job.id,
            },
        )
        if session.get_bind().dialect.name == "postgresql":
            _insert_registration(session, asset, job, event)
        else:
            _claim_name(session, name, asset.asset_type)
            for rows in ([asset], asset.tag_rows, asset.dependency_rows, [job], job.steps):
                insert_new(session, rows)
            insert_numbered(session(), [event])
        enqueue_after_commit(session(), RUN_REGISTRATION, [job.id])
        session.commit()
    except IntegrityError:
        session.rollback()
        duplicate = _visible_duplicate_id(session, name, key, actor)
        if duplicate is None:
            raise
        raise AssetAlreadyExistsError(name, data["version"], duplicate or None) from None
    except Exception:
        session.rollback()
        raise
    return Registration(asset=asset, job=job)


def _provenance_document(provenance: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if provenance is None:
        return None
    doc = dict(provenance)
    if isinstance(doc.get("created_at"), dt.datetime):
        doc["created_at"] = doc["created_at"].isoformat().replace("+00:00", "Z")
    if doc.get("commit_hash"):
        doc["commit_hash"] = doc["commit_hash"].lower()
    return doc


def _dependency_rows(
    session: DbSession, asset_id: str, refs: Sequence[Mapping[str, Any]]
) -> list[AssetDependency]:
    """Declared edges. An ``{id}`` ref shows the target's name and type at once when it exists;
    resolution and locking happen in the pipeline's ``dependencies`` step."""
    ids = [ref["id"] for ref in refs if "id" in ref]
    known = (
        {
            row.id: row
            for row in session.execute(
                select(Asset.id, Asset.name, Asset.asset_type).where(
                    Asset.id.in_(ids), Asset.deleted_at.is_(None)
                )
            )
        }
        if ids
        else {}
    )
    rows = []
    for position, ref in enumerate(refs):
        if "id" in ref:
            target = known.get(ref["id"])
            rows.append(
                AssetDependency(
                    asset_id=asset_id,
                    position=position,
                    ref_id=ref["id"],
                    name=target.name if target else None,
                    asset_type=target.asset_type if target else None,
                )
            )
        else:
            rows.append(
                AssetDependency(
                    asset_id=asset_id,
                    position=position,
                    name=ref["name"],
                    asset_type=ref.get("asset_type"),
                    version_range=ref["version"],
                )
            )
    return rows


# ---- reads -----------------------------------------------------------------------------------


def get_asset(asset_id: str, *, include_deleted: bool = False) -> Asset:
    """The asset with this id; ``AssetNotFoundError`` when there is none (or it is deleted)."""
    asset = db.session.get(Asset, asset_id)
    if asset is None or (asset.deleted_at is not None and not include_deleted):
        raise AssetNotFoundError(asset_id)
    return asset


def get_assets(asset_ids: list[str]) -> list[Asset]:
    """The live assets among ``asset_ids`` (any order), with their tags and dependencies."""
    return list(
        db.session.scalars(select(Asset).where(Asset.id.in_(asset_ids), Asset.deleted_at.is_(None)))
    )


def read_asset(asset_id: str, actor: Identity, include_deleted: bool) -> Asset:
    """``GET /v1/assets/{id}``: deleted assets only for admins who ask for them."""
    if include_deleted and not actor.can("asset:read_deleted"):
        raise ForbiddenError("only admins may read deleted assets")
    return get_asset(asset_id, include_deleted=include_deleted)


def _sort_keys(sort: str, descending: bool) -> list[SortKey]:
    first = {
        "created_at": SortKey(Asset.created_at, lambda a: a.created_at, "datetime", descending),
        "updated_at": SortKey(Asset.updated_at, lambda a: a.updated_at, "datetime", descending),
        "name": SortKey(Asset.name, lambda a: a.name, "str", descending),
        "version": SortKey(Asset.version_sort, lambda a: a.version_sort, "bytes", descending),
        "size_bytes": SortKey(
            Asset.size_bytes, lambda a: a.size_bytes, "int", descending, nullable=True
        ),
    }[sort]
    return [first, SortKey(Asset.id, lambda a: a.id, "str", descending)]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _tagged_total(tag: str, include_deleted: bool) -> int:
    """How many assets carry ``tag``, deleted ones only with ``include_deleted``: the tag's
    rows in its index less those of deleted assets (a partial index of their ids, 0009), one
    snapshot. Counting the live tagged assets directly looks each of them up (a 1% tag of 1M
    assets: ~200 ms on PostgreSQL, against ~4 ms this way)."""
    tagged = select(func.count()).select_from(AssetTag).where(AssetTag.tag == tag)
    if include_deleted:
        return int(db.session.scalar(tagged) or 0)
    deleted = (
        select(func.count())
        .select_from(AssetTag)
        .join(Asset, Asset.id == AssetTag.asset_id)
        .where(AssetTag.tag == tag, Asset.deleted_at.is_not(None))
    )
    return int(db.session.scalar(select(tagged.scalar_subquery() - deleted.scalar_subquery())) or 0)


# The list filters the live counts answer (any other filter, deleted ones included: COUNT).
_COUNTED_FILTERS = frozenset({"asset_type", "status", "compliance"})
_NOT_FILTERS = frozenset({"sort", "order", "limit", "cursor"})


def list_assets(args: Mapping[str, Any], actor: Identity, *, ids_only: bool = False) -> Page[Any]:
    """A filtered, sorted page of assets (``GET /v1/assets``). Deleted ones only for admins who
    ask with ``include_deleted``. With ``ids_only`` the items are rows of the assets' ids (and
    sort values), for a caller that has the documents cached."""
    if args.get("include_deleted") and not actor.can("asset:read_deleted"):
        raise ForbiddenError("only admins may list deleted assets")
    stmt: Select[Any] = select(Asset)
    if not args.get("include_deleted"):
        stmt = stmt.where(Asset.deleted_at.is_(None))
    for field in ("asset_type", "name", "status"):
        if args.get(field):
            stmt = stmt.where(getattr(Asset, field) == args[field])
    if args.get("compliance"):
        stmt = stmt.where(Asset.compliance_status == args["compliance"])
    for tag in args.get("tag") or ():
        stmt = stmt.where(exists().where(AssetTag.asset_id == Asset.id, AssetTag.tag == tag))
    if args.get("author"):
        stmt = stmt.where(
            or_(Asset.provenance_author == args["author"], Asset.created_by == args["author"])
        )
    if args.get("q"):
        pattern = f"%{_escape_like(args['q'].lower())}%"
        stmt = stmt.where(
            or_(
                func.lower(Asset.name).like(pattern, escape="\\"),
                # '' as a literal: the expression of PostgreSQL's trigram index (0007).
                func.lower(func.coalesce(Asset.description, literal_column("''"))).like(
                    pattern, escape="\\"
                ),
            )
        )
    if args.get("created_after"):
        stmt = stmt.where(Asset.created_at > args["created_after"])
    if args.get("created_before"):
        stmt = stmt.where(Asset.created_at < args["created_before"])
    sort = args.get("sort") or "created_at"
    order = args.get("order") or ("asc" if sort == "name" else "desc")
    bound = {k: v for k, v in args.items() if k not in ("limit", "cursor")}
    bound["order"] = order
    if bound.get("tag"):
        bound["tag"] = sorted(set(bound["tag"]))  # the same filter however the tags are listed
    count: Callable[[], int | None] | None = None  # how to know the total, if not COUNT
    filters = {k for k, v in args.items() if v and k not in _NOT_FILTERS}
    if filters <= _COUNTED_FILTERS:
        # Filtered by type, status or compliance only (or nothing): the trigger-kept counts
        # know the total, which on a large table saves counting up to every row.
        count = functools.partial(
            live_asset_total,
            db.session,
            args.get("asset_type"),
            args.get("status"),
            args.get("compliance"),
        )
    elif "tag" in filters and filters <= {"tag", "include_deleted"} and len(bound["tag"]) == 1:
        count = functools.partial(
            _tagged_total, bound["tag"][0], include_deleted="include_deleted" in filters
        )
    keys = _sort_keys(sort, order == "desc")
    if ids_only:
        stmt = stmt.with_only_columns(*dict.fromkeys(key.expression for key in keys))
    return paginate(
        db.session,
        stmt,
        keys,
        limit=args["limit"],
        cursor=args.get("cursor"),
        bound_to=bound,
        count=count,
        as_rows=ids_only,
    )


def list_versions(name: str, limit: int, cursor: str | None) -> Page[Asset]:
    """Every non-deleted version of ``name``, highest SemVer first; 404 for an unknown name."""
    stmt = select(Asset).where(Asset.name == name, Asset.deleted_at.is_(None))
    page = paginate(
        db.session,
        stmt,
        _sort_keys("version", True),
        limit=limit,
        cursor=cursor,
        bound_to={"name": name},
    )
    if page.total == 0:
        raise AssetNotFoundError(name)
    return page


def latest_version(name: str) -> Asset:
    """The highest active release of ``name``, else its highest active pre-release."""
    for prerelease in (False, True):
        asset = db.session.scalar(
            select(Asset)
            .where(
                Asset.name == name,
                Asset.status == "active",
                Asset.prerelease.is_(prerelease),
                Asset.deleted_at.is_(None),
            )
            .order_by(Asset.version_sort.desc())
            .limit(1)
        )
        if asset is not None:
            return asset
    raise NoActiveVersionError(name)


def get_version(name: str, version: str) -> Asset:
    """``name`` at ``version`` (build metadata ignored)."""
    try:
        key = without_build(parse_version(version))
    except ValueError:
        raise AssetNotFoundError(f"{name} {version}") from None
    asset = db.session.scalar(
        select(Asset).where(
            Asset.name == name, Asset.version_key == key, Asset.deleted_at.is_(None)
        )
    )
    if asset is None:
        raise AssetNotFoundError(f"{name} {version}")
    return asset


# ---- changes ---------------------------------------------------------------------------------


def update_asset(
    asset_id: str, changes: Mapping[str, Any], actor: Identity, if_match: list[str] | None
) -> Asset:
    """Apply a PATCH (commits): replace tags, merge annotations (null deletes a key), move the
    status along the allowed transitions. Writes ``asset_updated`` and/or
    ``asset_status_changed``. Raises 412 for a stale ``If-Match``, 409 for a forbidden transition.
    """
    session = db.session
    asset = get_asset(asset_id)
    _check_governance(asset.asset_type, actor)
    if if_match is not None and "*" not in if_match and asset.etag not in if_match:
        raise PreconditionFailedError(
            f"the asset changed: its ETag is now {asset.etag}; re-read it and retry"
        )
    # Check the transition before touching the row: a refused PATCH changes nothing at all.
    status_change = None
    if "status" in changes and changes["status"] != asset.status:
        target = changes["status"]
        if target not in TRANSITIONS.get(asset.status, frozenset()):
            raise StatusTransitionError(asset.status, target)
        status_change = (asset.status, target)
    now = utcnow()
    updated: list[str] = []
    for field in ("description", "license"):
        if field in changes and getattr(asset, field) != changes[field]:
            setattr(asset, field, changes[field])
            updated.append(field)
    if "tags" in changes and asset.tags != changes["tags"]:
        _replace_tags(asset, changes["tags"])
        updated.append("tags")
    if "annotations" in changes:
        merged = dict(asset.annotations)
        for key, value in changes["annotations"].items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if merged != asset.annotations:
            asset.annotations = merged
            updated.append("annotations")
    if status_change is not None:
        asset.status = status_change[1]
        if status_change[1] == "deprecated":
            asset.deprecated_at = now
        elif status_change[1] == "active":
            asset.deprecated_at = None
    if not updated and status_change is None:
        return asset
    asset.updated_at = now
    if updated:
        record_event(session, "asset_updated", asset.id, {"fields": updated})
    if status_change:
        record_event(
            session,
            "asset_status_changed",
            asset.id,
            {"from": status_change[0], "to": status_change[1]},
        )
        if asset.asset_type == "policy":
            # Which policy version applies may have changed: re-check what it governs.
            from app.compliance.service import create_scan_job

            create_scan_job(
                actor=actor.username, policy_id=asset.id, reason="policy status changed"
            )
    try:
        session.commit()
    except StaleDataError:
        session.rollback()
        if if_match is not None:
            raise PreconditionFailedError("the asset changed while this update ran") from None
        raise ConflictError("the asset changed while this update ran; retry") from None
    return asset


def _replace_tags(asset: Asset, tags: list[str]) -> None:
    # Keep the rows of tags that stay: deleting and re-inserting one primary key in a single
    # flush would collide.
    existing = {row.tag: row for row in asset.tag_rows}
    rows = []
    for position, tag in enumerate(tags):
        row = existing.get(tag) or AssetTag(tag=tag)
        row.position = position
        rows.append(row)
    asset.tag_rows = rows


def delete_asset(asset_id: str, actor: Identity, force: bool) -> None:
    """Soft-delete (commits): the asset leaves reads and lists, its (name, version) stays
    reserved and its blob is kept. ``HasDependentsError`` while live assets depend on it, unless
    an admin forces it."""
    if force and not actor.can("asset:force_delete"):
        raise ForbiddenError("only admins may force a delete")
    session = db.session
    asset = get_asset(asset_id)
    _check_governance(asset.asset_type, actor)
    # Under the graph lock: no dependency step can lock an edge to it while it goes.
    from app.dependencies.service import serialize_graph_changes

    serialize_graph_changes(session)
    dependent = live_dependents(session, asset.id)
    if dependent and not force:
        raise HasDependentsError(
            f"{len(dependent)} live asset(s) depend on {asset.name} {asset.version} "
            f"(e.g. {', '.join(dependent[:5])}); delete them first or use ?force=true (admin)",
            dependents=dependent[:50],
        )
    asset.deleted_at = utcnow()
    asset.deleted_by = actor.username
    asset.updated_at = asset.deleted_at
    if asset.asset_type == "policy":
        # An older version may apply again, or none: re-check what the policy governed.
        from app.compliance.service import create_scan_job

        create_scan_job(actor=actor.username, policy_id=asset.id, reason="policy deleted")
    record_event(
        session,
        "asset_deleted",
        asset.id,
        {"name": asset.name, "version": asset.version, "forced": bool(force and dependent)},
    )
    try:
        session.commit()
    except StaleDataError:
        session.rollback()
        raise ConflictError("the asset changed while it was being deleted; retry") from None


def live_dependents(session: DbSession, asset_id: str) -> list[str]:
    """Ids of live (not deleted, not rejected/archived) assets whose locked edges point here."""
    rows = session.scalars(
        select(Asset.id)
        .join(AssetDependency, AssetDependency.asset_id == Asset.id)
        .where(
            and_(
                AssetDependency.resolved_id == asset_id,
                Asset.deleted_at.is_(None),
                Asset.status.in_(LIVE_DEPENDENT_STATUSES),
            )
        )
        .distinct()
        .limit(51)
    )
    return list(rows)
