"""``llm-registry worker``: the celery command line it becomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import app.cli as cli


@pytest.fixture
def celery_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setenv("REGISTRY_ENV", "development")
    monkeypatch.chdir(tmp_path)  # its var/ (a development JWT secret) goes there
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "prepare_broker", lambda _settings: None)
    monkeypatch.setattr(cli, "_celery", lambda args, _config: calls.append(list(args)))
    return calls


def _run(*args: str) -> Any:
    result = CliRunner().invoke(cli.main, ["worker", *args])
    assert result.exit_code == 0, result.output
    return result


def test_a_worker_sends_no_task_events_unless_asked(celery_argv: list[list[str]]) -> None:
    _run("--concurrency", "2")
    (argv,) = celery_argv
    assert argv[0] == "worker"
    assert "--task-events" not in argv and "-E" not in argv
    assert argv[argv.index("--concurrency") + 1] == "2"


def test_task_events_from_the_start(celery_argv: list[list[str]]) -> None:
    _run("--task-events")
    (argv,) = celery_argv
    assert "--task-events" in argv
