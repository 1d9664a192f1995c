"""Upload and verify one large blob through a running registry; print throughput and peak RSS.

    .venv/bin/python bench/bench_blobs.py [--size-gib 2] [--database-url URL] [--broker-url URL]

Starts ``llm-registry serve`` (1 process) and ``llm-registry worker`` (1 process) in a temporary
directory (embedded defaults unless URLs are given), streams a file of the given size to
``POST /v1/blobs``, registers it with its SHA-256 and waits for the checksum step. Then hashes the
same stored file with ``openssl dgst -sha256`` and ``sha256sum`` for comparison, and reads each
process's peak resident set (VmHWM). Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import stop_cleanly_on_sigterm

CHUNK = 8 * 1024 * 1024
PASSWORD = "bench-password-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_file(path: Path, size: int) -> str:
    """A file of ``size`` incompressible-ish bytes; returns its SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    written = 0
    with path.open("wb") as fh:
        while written < size:
            piece = block[: min(CHUNK, size - written)]
            piece = written.to_bytes(8, "big") + piece[8:] if len(piece) > 8 else piece
            fh.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = child.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out += tree(int(child.parent.name))
    return out


def peak_rss_mib(pid: int) -> dict[int, float]:
    peaks = {}
    for member in tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            peaks[member] = int(match.group(1)) / 1024
    return peaks


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--database-url")
    parser.add_argument("--broker-url")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this long")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    size = int(args.size_gib * 1024**3)
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="bench-blobs-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        REGISTRY_ENV="development",
        REGISTRY_ADMIN_USERNAME="bench",
        REGISTRY_ADMIN_PASSWORD=PASSWORD,
        SERVER_PORT=str(port),
        LOG_LEVEL="WARNING",
        MAX_BLOB_BYTES=str(size + 1),
    )
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["CELERY_BROKER_URL"] = args.broker_url
    procs: list[subprocess.Popen[bytes]] = []
    log = (work / "processes.log").open("wb")
    try:
        subprocess.run(
            [bin_dir / "llm-registry", "migrate"],
            cwd=work,
            env=env,
            check=True,
            stdout=log,
            stderr=log,
        )
        for cmd in (
            ["serve", "--workers", "1", "--threads", "4"],
            ["worker", "--concurrency", "1"],
        ):
            procs.append(
                subprocess.Popen(
                    [bin_dir / "llm-registry", *cmd],
                    cwd=work,
                    env=env,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health/live", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        session = requests.Session()
        token = session.post(
            f"{base}/v1/auth/login", json={"username": "bench", "password": PASSWORD}
        ).json()
        session.headers["Authorization"] = f"Bearer {token['access_token']}"

        session.get(f"{base}/v1/assets", params={"limit": 1}).raise_for_status()  # warm up
        api_before = peak_rss_mib(procs[0].pid)
        worker_before = peak_rss_mib(procs[1].pid)
        source = work / "source.bin"
        print(f"writing a {size / 1024**3:.2f} GiB file ...", flush=True)
        digest = make_file(source, size)
        started = time.perf_counter()
        with source.open("rb") as fh:
            uploaded = session.post(
                f"{base}/v1/blobs",
                data=fh,
                timeout=args.timeout,
                headers={"Content-Type": "application/octet-stream", "X-Checksum-SHA256": digest},
            )
        upload_s = time.perf_counter() - started
        uploaded.raise_for_status()
        stored = Path(uploaded.json()["uri"].removeprefix("file://"))
        source.unlink()

        started = time.perf_counter()
        registered = session.post(
            f"{base}/v1/assets",
            json={
                "asset_type": "model",
                "name": "bench/big",
                "version": f"1.0.{int(time.time())}",
                "checksum": {"algorithm": "SHA256", "value": digest},
            },
        )
        registered.raise_for_status()
        href = registered.headers["Location"]
        while time.perf_counter() - started < args.timeout:
            job = session.get(f"{base}{href}").json()
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        verify_s = time.perf_counter() - started
        step = next(s for s in job["steps"] if s["name"] == "checksum")
        api_after = peak_rss_mib(procs[0].pid)
        worker_after = peak_rss_mib(procs[1].pid)
        openssl_s = timed(["openssl", "dgst", "-sha256", str(stored)])
        sha256sum_s = timed(["sha256sum", str(stored)]) if shutil.which("sha256sum") else None

        mb = size / 1e6
        print()
        print(f"{'what':<44}{'seconds':>10}{'MB/s':>10}")
        print(
            f"{'upload POST /v1/blobs (stream + hash + store)':<44}{upload_s:>10.2f}"
            f"{mb / upload_s:>10.0f}"
        )
        print(
            f"{'registration job (queue + checksum step)':<44}{verify_s:>10.2f}"
            f"{mb / verify_s:>10.0f}"
        )
        print(f"{'openssl dgst -sha256 (same file)':<44}{openssl_s:>10.2f}{mb / openssl_s:>10.0f}")
        if sha256sum_s:
            print(f"{'sha256sum (same file)':<44}{sha256sum_s:>10.2f}{mb / sha256sum_s:>10.0f}")
        print()
        print(f"checksum step: {step['status']} - {step['detail']}")
        for label, before, after in (
            ("API (gunicorn)", api_before, api_after),
            ("worker (celery)", worker_before, worker_after),
        ):
            for pid, peak in sorted(after.items()):
                grown = (
                    f"+{peak - before[pid]:.1f} MiB during the upload and verification"
                    if pid in before
                    else "a process started during the run"
                )
                print(f"peak RSS {label} pid {pid}: {peak:.0f} MiB ({grown})")
        print(
            f"job verdict: {job['status']}; the whole job (queue and every step) ran at "
            f"{openssl_s / verify_s:.2f}x openssl's speed (the checksum step's own rate is above)"
        )
    finally:
        for proc in procs:
            with_suppress_kill(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def with_suppress_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
