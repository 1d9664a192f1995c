"""Which registration steps may take long for an asset (app/jobs/registration.py): the start of
such a step is committed on its own before it runs (it shows ``running`` while it reads), the
others' go with the next commit."""

from __future__ import annotations

import io
import os

import pytest
from flask import Flask

from app.assets.models import Asset
from app.jobs.pipeline import JobContext
from app.jobs.registration import QUICK_CONTENT_BYTES, content_may_take_long
from app.storage import StorageError

pytestmark = pytest.mark.integration


def _with_content(app: Flask, size: int) -> Asset:
    stored = app.extensions["blob_store"].put(io.BytesIO(os.urandom(size)))
    return Asset(checksum_algorithm="SHA256", checksum_value=stored.hex_digest)


def test_small_content_is_quick_and_large_content_may_take_long(app: Flask) -> None:
    small = _with_content(app, 1024)
    limit = _with_content(app, QUICK_CONTENT_BYTES)
    large = _with_content(app, QUICK_CONTENT_BYTES + 1)

    assert content_may_take_long(small, JobContext("job-1", "w")) is False
    assert content_may_take_long(limit, JobContext("job-2", "w")) is False
    assert content_may_take_long(large, JobContext("job-3", "w")) is True


def test_content_of_unknown_size_may_take_long_and_no_content_is_quick(app: Flask) -> None:
    missing = Asset(checksum_algorithm="SHA256", checksum_value="ab" * 32)
    outside = Asset(storage_uri="file:///somewhere/else/model.bin")

    assert content_may_take_long(missing, JobContext("job-1", "w")) is True
    assert content_may_take_long(outside, JobContext("job-2", "w")) is True
    assert content_may_take_long(Asset(), JobContext("job-3", "w")) is False


def test_the_store_is_asked_once_per_run_of_a_job(app: Flask) -> None:
    asset = _with_content(app, 1024)
    context = JobContext("job-1", "w")
    assert content_may_take_long(asset, context) is False

    app.extensions["blob_store"].delete(f"sha256/{asset.checksum_value[:2]}/{asset.checksum_value}")

    assert content_may_take_long(asset, context) is False  # the checksum step and the scan step
    assert content_may_take_long(asset, JobContext("job-2", "w")) is True


def test_a_store_that_fails_makes_content_long_and_is_asked_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = _with_content(app, 1024)
    context = JobContext("job-1", "w")
    store = app.extensions["blob_store"]
    working = store.size

    def failing(_key: str) -> int | None:
        raise StorageError("the store is away")

    monkeypatch.setattr(store, "size", failing)
    assert content_may_take_long(asset, context) is True

    monkeypatch.setattr(store, "size", working)
    assert content_may_take_long(asset, context) is False  # nothing was remembered
