"""End to end: the ``llmreg`` command line (client/), run as a user runs it — the console script
in a subprocess, its config in a temporary folder — against a live registry in both variants:
log in, push and pull back byte-identical, a rejection explained, a dependency tree, exit codes,
and downloads that are interrupted or corrupt leaving nothing under the final name."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, VARIANTS, Server, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LLMREG = str(Path(sys.executable).parent / "llmreg")
# The exit codes `llmreg --help` documents.
OK, ERROR, USAGE, NOT_FOUND, AUTH, REJECTED, TIMEOUT, CHECKSUM, INTERRUPTED = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    130,
)


@pytest.fixture(scope="module", params=VARIANTS)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One live registry per variant, shared by this module's tests (each uses its own names)."""
    workdir = tmp_path_factory.mktemp(f"cli-{request.param}")
    # Shutting down is test_server.py's subject, not this module's: no waiting for it here.
    with start_server(request.param, workdir, kill_after=1) as live:
        yield live


class Cli:
    """``llmreg`` as a subprocess, with its own config folder."""

    def __init__(self, config_dir: Path, cwd: Path, extra_env: dict[str, str] | None = None):
        self.config_dir = config_dir
        self.cwd = cwd
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMREG_")}
        self.env = {**env, "LLMREG_CONFIG_DIR": str(config_dir), **(extra_env or {})}

    def argv(self, *args: str) -> list[str]:
        return [LLMREG, *args]

    def run(
        self, *args: str, code: int | None = OK, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )
        if code is not None:
            assert result.returncode == code, (
                f"llmreg {' '.join(args)} exited {result.returncode}, expected {code}\n"
                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
            )
        return result

    def json(self, *args: str, code: int | None = OK) -> Any:
        result = self.run(*args, "--output", "json", code=code)
        return json.loads(result.stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )


@pytest.fixture
def cli(registry: Server, tmp_path: Path) -> Cli:
    """``llmreg`` logged in to ``registry`` as the admin (password read from standard input)."""
    tool = Cli(tmp_path / "config", tmp_path)
    tool.run(
        "login", "--url", registry.base, "-u", "admin", "--password-stdin", stdin=ADMIN_PASSWORD
    )
    return tool


def _file(path: Path, size: int) -> tuple[Path, str]:
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _blob_file(registry: Server, sha256: str) -> Path:
    path = registry.workdir / "var" / "blobs" / "sha256" / sha256[:2] / sha256
    assert path.is_file(), f"no blob file at {path}"
    return path


# Two tests per variant, each a session of several scenarios: the live registries are the
# slow part, and with two tests a variant, pytest-xdist starts each registry once.


def test_push_pull_and_inspect(registry: Server, cli: Cli, tmp_path: Path) -> None:
    """A user's session: push and pull back, read what is there, see a rejection explained,
    follow a dependency tree."""
    _round_trip(cli, tmp_path)
    _rejection_explained(cli, tmp_path)
    _dependency_tree(cli, tmp_path)


def test_credentials_and_downloads_that_go_wrong(
    registry: Server, cli: Cli, tmp_path: Path
) -> None:
    """Interrupted and corrupt downloads leave nothing under the final name; logins, API keys
    and token refresh behave as documented."""
    _interrupted_pull(cli, tmp_path)
    _corrupt_pull(registry, cli, tmp_path)
    _credentials(registry, cli, tmp_path)


def _round_trip(cli: Cli, tmp_path: Path) -> None:
    config = cli.config_dir / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config_dir.stat().st_mode) == 0o700
    assert ADMIN_PASSWORD not in config.read_text()
    assert cli.json("whoami")["username"] == "admin"

    model, sha = _file(tmp_path / "tiny.safetensors.bin", 3 * 1024 * 1024 + 17)
    pushed = cli.json(
        "push", str(model), "--type", "model", "--name", "cli/tiny", "--version", "1.0.0",
        "--license", "MIT", "--tag", "chat", "--annotation", "team=nlp",
    )  # fmt: skip
    asset = pushed["asset"]
    assert pushed["uploaded"] is True
    assert asset["status"] == "active", pushed
    assert asset["checksum"] == {"algorithm": "SHA256", "value": sha}
    assert asset["size_bytes"] == model.stat().st_size
    assert asset["annotations"] == {"team": "nlp", "llmreg.filename": model.name}
    assert pushed["job"]["status"] == "succeeded"
    assert [s["status"] for s in pushed["job"]["steps"]][:2] == ["passed", "passed"]

    # The same bytes again under a new version: nothing is uploaded, the verdict is printed.
    again = cli.run("push", str(model), "-n", "cli/tiny", "--version", "1.1.0")
    assert "nothing to upload" in again.stderr
    assert "cli/tiny@1.1.0 is active" in again.stderr
    # (name, version) is taken forever.
    taken = cli.run("push", str(model), "-n", "cli/tiny", "--version", "1.0.0", code=ERROR)
    assert "ALREADY_EXISTS" in taken.stderr and asset["id"] in taken.stderr

    out = tmp_path / "out"
    out.mkdir()
    pulled = cli.json("pull", "cli/tiny@1.0.0", "--dest", str(out))
    target = out / model.name  # the pushed file's name, kept as an annotation
    assert pulled["path"] == str(target) and pulled["downloaded"] is True
    assert target.read_bytes() == model.read_bytes()
    by_id = tmp_path / "by-id.bin"
    cli.run("pull", asset["id"], "-d", str(by_id))
    assert by_id.read_bytes() == model.read_bytes()
    latest = tmp_path / "latest.bin"
    assert cli.json("pull", "cli/tiny", "-d", str(latest))["version"] == "1.1.0"
    assert sorted(p.name for p in out.iterdir()) == [model.name]  # no part file left

    listed = cli.json("ls", "--name", "cli/tiny", "--tag", "chat")
    assert [a["version"] for a in listed] == ["1.0.0"]
    assert [a["version"] for a in cli.json("versions", "cli/tiny")] == ["1.1.0", "1.0.0"]
    shown = cli.json("show", "cli/tiny@1.0.0")
    assert shown["id"] == asset["id"] and shown["license"] == "MIT"
    table = cli.run("show", "cli/tiny@1.0.0").stdout
    assert sha in table and "active" in table
    jobs = cli.json("jobs", "--asset", "cli/tiny@1.0.0")
    assert [(j["kind"], j["status"]) for j in jobs] == [("registration", "succeeded")]
    events = [
        json.loads(line)
        for line in cli.run("events", "tail", "--asset", asset["id"], "-o", "json").stdout.split(
            "\n"
        )
        if line
    ]
    types = [e["type"] for e in events]
    assert types[0] == "asset_registered" and "asset_validated" in types, types
    assert all(e["subject"] == asset["id"] for e in events)

    # Exit codes scripts can rely on.
    missing = cli.run("pull", "cli/tiny@9.9.9", code=NOT_FOUND)
    assert "NOT_FOUND" in missing.stderr
    problem = json.loads(cli.run("show", "cli/nothing@1.0.0", "-o", "json", code=3).stderr)
    assert problem["error"]["code"] == "NOT_FOUND" and problem["error"]["status"] == 404
    cli.run("push", str(model), "--version", "1.0.0", code=USAGE)  # no --name
    cli.run("pull", "@1.0.0", code=USAGE)
    cli.run("ls", "--bogus-option", code=USAGE)


def _credentials(registry: Server, cli: Cli, tmp_path: Path) -> None:
    stranger = Cli(tmp_path / "stranger", tmp_path)
    wrong = stranger.run(
        "login", "--url", registry.base, "-u", "admin", "--password-stdin", stdin="wrong", code=AUTH
    )
    assert "UNAUTHORIZED" in wrong.stderr
    assert not (stranger.config_dir / "config.json").exists()

    # An access token that no longer works is replaced with the refresh token, once, and the
    # rotated pair (refresh tokens are single use) is what the file keeps.
    config = cli.config_dir / "config.json"
    stored = json.loads(config.read_text())
    entry = stored["servers"][registry.base]
    entry["access_token"] = entry["access_token"][:-6] + "AAAAAA"
    config.write_text(json.dumps(stored))
    assert cli.json("whoami")["username"] == "admin"
    rotated = json.loads(config.read_text())["servers"][registry.base]
    assert rotated["refresh_token"] != entry["refresh_token"]
    assert rotated["access_token"] != entry["access_token"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert cli.json("whoami")["username"] == "admin"  # and the new pair goes on working

    created = cli.json("keys", "create", "ci", "--role", "developer")
    assert created["key"].startswith("llmr_")
    keyed = Cli(tmp_path / "keyed", tmp_path)
    keyed.run("login", "--url", registry.base, "--api-key", created["key"])
    me = keyed.json("whoami")
    assert "policy:write" in me["permissions"] and "user:manage" not in me["permissions"]
    data, _ = _file(tmp_path / "keyed.bin", 1000)
    pushed = keyed.json("push", str(data), "-n", "cli/keyed", "--version", "1.0.0")
    assert pushed["asset"]["created_by"] == "admin"
    from_env = Cli(
        tmp_path / "empty",
        tmp_path,
        {"LLMREG_API_KEY": created["key"], "LLMREG_URL": registry.base},
    )
    assert from_env.json("whoami")["username"] == "admin"
    assert [k["id"] for k in cli.json("keys", "ls")] == [created["id"]]
    cli.run("keys", "revoke", created["id"])
    assert "UNAUTHORIZED" in keyed.run("whoami", code=AUTH).stderr

    cli.run("logout")
    assert registry.base not in json.loads(config.read_text())["servers"]
    cli.run("whoami", code=AUTH)


def _rejection_explained(cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "licenses.yaml"
    policy.write_text(
        """\
name: cli/license-allowlist
version: 1.0.0
description: permissive licenses only, for models tagged cli-policed
applies_to: {asset_types: [model], tags: [cli-policed]}
rules:
  - name: allowed-license
    severity: deny
    expression: asset.license in ["MIT", "Apache-2.0"]
    message: license must be MIT or Apache-2.0
"""
    )
    applied = cli.json("policy", "apply", str(policy))
    assert applied["asset"]["asset_type"] == "policy"
    assert applied["asset"]["status"] == "active", applied
    again = cli.run("policy", "apply", str(policy))  # the same spec again: nothing to do
    assert "unchanged" in again.stderr
    policy.write_text(policy.read_text().replace('"MIT", ', ""))
    changed = cli.run("policy", "apply", str(policy), code=ERROR)
    assert "ALREADY_EXISTS" in changed.stderr

    model, _ = _file(tmp_path / "gpl.bin", 4096)
    ok = cli.json(
        "push", str(model), "-n", "cli/permissive", "--version", "1.0.0",
        "--license", "MIT", "--tag", "cli-policed",
    )  # fmt: skip
    assert ok["asset"]["status"] == "active"
    rejected = cli.run(
        "push", str(model), "-n", "cli/copyleft", "--version", "1.0.0",
        "--license", "GPL-3.0-only", "--tag", "cli-policed", code=REJECTED,
    )  # fmt: skip
    assert "cli/copyleft@1.0.0 was rejected (POLICY_VIOLATION)" in rejected.stderr
    assert "step policies failed" in rejected.stderr
    assert "allowed-license" in rejected.stderr
    assert "license must be MIT or Apache-2.0" in rejected.stderr

    shown = cli.json("show", "cli/copyleft@1.0.0")
    assert shown["status"] == "rejected"
    assert shown["rejection"]["code"] == "POLICY_VIOLATION"
    assert shown["rejection"]["step"] == "policies"
    [job] = cli.json("jobs", "--asset", shown["id"])
    assert [s["name"] for s in job["steps"] if s["status"] == "failed"] == ["policies"]
    waited = cli.run("jobs", job["id"], "--wait", code=REJECTED)  # a verdict already reached
    assert "POLICY_VIOLATION" in waited.stdout and "allowed-license" in waited.stdout
    rejections = cli.json("ls", "--status", "rejected", "--name", "cli/copyleft")
    assert [a["id"] for a in rejections] == [shown["id"]]


def _dependency_tree(cli: Cli, tmp_path: Path) -> None:
    blob, _ = _file(tmp_path / "weights.bin", 2048)
    for name, kind, deps in (
        ("cli/base", "model", []),
        ("cli/adapter", "model", ["cli/base@^1.0"]),
        ("cli/app", "pipeline", ["cli/adapter@^1.0", "cli/base@~1.0"]),
    ):
        args = ["push", str(blob), "-t", kind, "-n", name, "--version", "1.0.0"]
        for dep in deps:
            args += ["--dep", dep]
        assert cli.json(*args)["asset"]["status"] == "active"

    tree = cli.run("deps", "cli/app@1.0.0").stdout.splitlines()
    assert tree[0].startswith("cli/app@1.0.0 pipeline active"), tree
    assert tree[1].startswith("├── cli/adapter@1.0.0 (^1.0) model active"), tree
    assert tree[2].startswith("│   └── cli/base@1.0.0 (^1.0) model active"), tree
    assert tree[3].startswith("└── cli/base@1.0.0 (~1.0) model active"), tree
    graph = cli.json("deps", "cli/app@1.0.0")
    depths = {n["name"]: n["depth"] for n in graph["nodes"]}
    assert depths == {"cli/app": 0, "cli/adapter": 1, "cli/base": 1}
    assert {e["constraint"] for e in graph["edges"]} == {"^1.0", "~1.0"}
    assert graph["truncated"] is False
    assert cli.json("deps", "cli/app@1.0.0", "--max-depth", "0")["truncated"] is True

    below = cli.run("dependents", "cli/base@1.0.0").stdout.splitlines()
    assert below[0].startswith("cli/base@1.0.0 model active"), below
    assert below[1].startswith("├── cli/adapter@1.0.0 (^1.0) model active"), below
    assert below[2].startswith("│   └── cli/app@1.0.0 (^1.0) pipeline active"), below
    assert below[3].startswith("└── cli/app@1.0.0 (~1.0) pipeline active"), below
    assert [n["name"] for n in cli.json("dependents", "cli/base@1.0.0")["nodes"]] == [
        "cli/base",
        "cli/adapter",
        "cli/app",
    ]

    unresolved = cli.run(
        "push", str(blob), "-n", "cli/orphan", "--version", "1.0.0", "--dep", "cli/nowhere@^1",
        code=REJECTED,
    )  # fmt: skip
    assert "DEPENDENCY_NOT_FOUND" in unresolved.stderr
    assert "step dependencies failed" in unresolved.stderr and "cli/nowhere" in unresolved.stderr


def _wait_growing(part: Path, process: subprocess.Popen[str], timeout: float = 20) -> None:
    """Until ``part`` exists and has grown past its first size: the download is under way."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if part.exists():
            size = part.stat().st_size
            if first is None:
                first = size
            elif size > first:
                return
        time.sleep(0.05)
    raise AssertionError(f"{part} did not appear and grow within {timeout} s")


def _interrupted_pull(cli: Cli, tmp_path: Path) -> None:
    model, _ = _file(tmp_path / "big.bin", 8 * 1024 * 1024)
    cli.run("push", str(model), "-n", "cli/big", "--version", "1.0.0")
    dest = tmp_path / "pulled" / "big.bin"
    dest.parent.mkdir()
    part = dest.with_name("big.bin.part")

    for sig in (signal.SIGINT, signal.SIGTERM):
        # 2 MiB/s: four seconds for the whole blob, killed well before.
        pulling = cli.popen("pull", "cli/big@1.0.0", "-d", str(dest), "--limit-rate", "2M")
        _wait_growing(part, pulling)
        pulling.send_signal(sig)
        _, stderr = pulling.communicate(timeout=20)
        assert pulling.returncode == INTERRUPTED, stderr
        assert not dest.exists(), f"{sig!r} left a file under the final name"
        assert not part.exists(), f"{sig!r} left the part file"

    # A kill leaves no chance to clean up: the part file may stay, the final name never appears,
    # and the next pull starts over rather than trusting the unverified bytes.
    pulling = cli.popen("pull", "cli/big@1.0.0", "-d", str(dest), "--limit-rate", "2M")
    _wait_growing(part, pulling)
    pulling.kill()
    pulling.communicate(timeout=20)
    assert not dest.exists()
    assert 0 < part.stat().st_size < model.stat().st_size
    part.write_bytes(b"x" * 1000)  # whatever it holds must not become part of the result
    cli.run("pull", "cli/big@1.0.0", "-d", str(dest))
    assert dest.read_bytes() == model.read_bytes()
    assert not part.exists()


def _corrupt_pull(registry: Server, cli: Cli, tmp_path: Path) -> None:
    model, sha = _file(tmp_path / "corrupt.bin", 1024 * 1024)
    cli.run("push", str(model), "-n", "cli/corrupt", "--version", "1.0.0")
    # The bytes rot on the server's disk after they were verified (same size, other content).
    blob = _blob_file(registry, sha)
    blob.chmod(0o600)
    with blob.open("r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00" * 16 if fh.read(16) != b"\x00" * 16 else b"\x01" * 16)

    dest = tmp_path / "out" / "corrupt.bin"
    dest.parent.mkdir()
    bad = cli.run("pull", "cli/corrupt@1.0.0", "-d", str(dest), code=CHECKSUM)
    assert sha in bad.stderr and "nothing was kept" in bad.stderr
    problem = json.loads(
        cli.run("pull", "cli/corrupt@1.0.0", "-d", str(dest), "-o", "json", code=CHECKSUM).stderr
    )
    assert problem["error"]["code"] == "CHECKSUM_MISMATCH"
    assert list(dest.parent.iterdir()) == []
