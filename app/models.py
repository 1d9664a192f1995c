"""Imports every model so that ``Base.metadata`` is complete (migrations, tests)."""

from app.assets.models import Asset, AssetDependency, AssetName, AssetTag
from app.auth.models import ApiKey, RevokedToken
from app.blobs.models import Blob
from app.events.models import Event, RelayState
from app.jobs.models import Job, JobStep
from app.stats.models import StatusCount, StatusCountDelta
from app.testsuites.models import TestRun
from app.users.models import User

__all__ = [
    "ApiKey",
    "Asset",
    "AssetDependency",
    "AssetName",
    "AssetTag",
    "Blob",
    "Event",
    "Job",
    "JobStep",
    "RelayState",
    "RevokedToken",
    "StatusCount",
    "StatusCountDelta",
    "TestRun",
    "User",
]
