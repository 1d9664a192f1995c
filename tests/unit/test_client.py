"""The Python client's own logic (client/llmreg), against a scripted registry on
``httpx.MockTransport``: problem codes to exceptions, token refresh and rotation, request
signing as the server checks it, paging, waiting, verified downloads, and the CLI's exit codes
where a live server cannot produce the case on demand (a verdict that never comes)."""

from __future__ import annotations

import hashlib
import json
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import llmreg.cli
import pytest
from llmreg import (
    AlreadyExistsError,
    ChecksumMismatchError,
    Client,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    InvalidInputError,
    JobTimeoutError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
    ValidationFailedError,
    parse_dependency,
    parse_ref,
)
from llmreg.config import ConfigStore, Credentials, resolve_settings
from llmreg.errors import InvalidReferenceError
from typer.testing import CliRunner

from app.auth.signing import signature_for

URL = "http://registry.test"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _no_llmreg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLMREG_URL", "LLMREG_API_KEY", "LLMREG_TOKEN", "LLMREG_OUTPUT"):
        monkeypatch.delenv(name, raising=False)


def problem(status: int, code: str, detail: str = "it went wrong", **extra: Any) -> httpx.Response:
    headers = {"Content-Type": "application/problem+json", **extra.pop("headers", {})}
    body = {"type": "about:blank", "title": "t", "status": status, "detail": detail, "code": code}
    return httpx.Response(status, json={**body, "request_id": "rid-1", **extra}, headers=headers)


class FakeRegistry:
    """Routes ``(METHOD, path)`` to handlers and records every request it gets."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, handler: Handler | httpx.Response) -> None:
        if isinstance(handler, httpx.Response):
            response = handler
            self.routes[(method, path)] = lambda _request: response
        else:
            self.routes[(method, path)] = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return problem(404, "NOT_FOUND", f"no route {request.method} {request.url.path}")
        return handler(request)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("token", "t0")
        return Client(URL, transport=httpx.MockTransport(self), **kwargs)


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "INVALID_INPUT", InvalidInputError),
        (401, "UNAUTHORIZED", UnauthorizedError),
        (403, "FORBIDDEN", ForbiddenError),
        (404, "NOT_FOUND", NotFoundError),
        (409, "CONFLICT", ConflictError),
        (409, "HAS_DEPENDENTS", ConflictError),
        (422, "VALIDATION_FAILED", ValidationFailedError),
        (503, "UNAVAILABLE", UnavailableError),
        (500, "INTERNAL_ERROR", ServerError),
    ],
)
def test_errors_are_chosen_by_the_problem_code(
    fake: FakeRegistry, status: int, code: str, cls: type[Exception]
) -> None:
    fake.on("DELETE", "/v1/assets/A1", problem(status, code, errors={"name": ["bad"]}))
    with pytest.raises(cls) as caught:
        fake.client(max_retries=0).delete_asset("A1")
    error = caught.value
    assert (error.status, error.code, error.detail) == (status, code, "it went wrong")  # type: ignore[attr-defined]
    assert error.request_id == "rid-1"  # type: ignore[attr-defined]
    assert error.errors == {"name": ["bad"]}  # type: ignore[attr-defined]


def test_already_exists_names_the_existing_asset(fake: FakeRegistry) -> None:
    fake.on("POST", "/v1/assets", problem(409, "ALREADY_EXISTS", asset_id="01EXISTING"))
    with pytest.raises(AlreadyExistsError) as caught:
        fake.client().register_asset("model", "acme/m", "1.0.0")
    assert caught.value.asset_id == "01EXISTING"
    assert isinstance(caught.value, ConflictError)


def test_an_answer_that_is_no_problem_document_maps_by_status(fake: FakeRegistry) -> None:
    fake.on("GET", "/v1/jobs/J", httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ServerError) as caught:
        fake.client(max_retries=0).get_job("J")
    assert caught.value.status == 502 and caught.value.detail == "Bad Gateway"
    fake.on("GET", "/v1/jobs/K", httpx.Response(404, text="not here"))
    with pytest.raises(NotFoundError) as missing:
        fake.client().get_job("K")
    assert missing.value.code == "NOT_FOUND" and missing.value.detail == "not here"


def test_rate_limits_retry_reads_and_surface_retry_after(
    fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    answers = iter([problem(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "2"})] * 2)
    fake.on(
        "GET",
        "/v1/jobs/J",
        lambda _r: next(answers, httpx.Response(200, json={"id": "J", "status": "queued"})),
    )
    assert fake.client().get_job("J")["id"] == "J"
    assert slept == [2.0, 2.0]
    # A write is never repeated behind the caller's back.
    fake.on("POST", "/v1/assets", problem(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "7"}))
    with pytest.raises(RateLimitError) as caught:
        fake.client().register_asset("model", "acme/m", "1.0.0")
    assert caught.value.retry_after == 7.0
    assert len(fake.calls("POST", "/v1/assets")) == 1


def test_an_unreachable_server_is_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client(URL, token="t", transport=httpx.MockTransport(refuse))
    with pytest.raises(ConnectionFailedError, match=r"cannot reach http://registry\.test"):
        client.me()


# ---- tokens --------------------------------------------------------------------------------------


def _me(expected_token: str) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {expected_token}":
            return problem(401, "UNAUTHORIZED", "the access token is invalid or expired")
        return httpx.Response(200, json={"id": "U", "username": "alice", "roles": ["user"]})

    return answer


def _refresh(pairs: Iterator[tuple[str, str]]) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        access, refresh = next(pairs)
        return httpx.Response(
            200,
            json={
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    return answer


def _stored(tmp_path: Path, **fields: Any) -> ConfigStore:
    store = ConfigStore(tmp_path / "cfg")
    store.save(URL, Credentials(username="alice", **fields))
    return store


def test_a_rejected_access_token_is_refreshed_once_and_the_new_pair_stored(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    store = _stored(tmp_path, access_token="a1", refresh_token="r1", expires_at=time.time() + 900)
    fake.on("GET", "/v1/auth/me", _me("a2"))
    fake.on("POST", "/v1/auth/refresh", _refresh(iter([("a2", "r2")])))
    client = Client(URL, config_dir=store.directory, transport=httpx.MockTransport(fake))
    assert client.me()["username"] == "alice"
    [refresh] = fake.calls("POST", "/v1/auth/refresh")
    assert json.loads(refresh.content) == {"refresh_token": "r1"}
    assert "Authorization" not in refresh.headers
    saved = store.credentials(URL)
    assert saved is not None and (saved.access_token, saved.refresh_token) == ("a2", "r2")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700


def test_a_second_401_is_raised_not_looped(fake: FakeRegistry, tmp_path: Path) -> None:
    store = _stored(tmp_path, access_token="a1", refresh_token="r1", expires_at=time.time() + 900)
    fake.on("GET", "/v1/auth/me", _me("never"))
    fake.on("POST", "/v1/auth/refresh", _refresh(iter([("a2", "r2"), ("a3", "r3")])))
    client = Client(URL, config_dir=store.directory, transport=httpx.MockTransport(fake))
    with pytest.raises(UnauthorizedError):
        client.me()
    assert len(fake.calls("POST", "/v1/auth/refresh")) == 1
    assert len(fake.calls("GET", "/v1/auth/me")) == 2


def test_a_token_about_to_expire_is_refreshed_before_it_is_sent(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    store = _stored(tmp_path, access_token="a1", refresh_token="r1", expires_at=time.time() + 5)
    fake.on("GET", "/v1/auth/me", _me("a2"))
    fake.on("POST", "/v1/auth/refresh", _refresh(iter([("a2", "r2")])))
    client = Client(URL, config_dir=store.directory, transport=httpx.MockTransport(fake))
    client.me()
    assert [r.url.path for r in fake.requests] == ["/v1/auth/refresh", "/v1/auth/me"]


def test_a_pair_another_process_rotated_is_adopted_not_spent_again(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """Refresh tokens are single use: spending r1 a second time would end the whole login."""
    store = _stored(tmp_path, access_token="a1", refresh_token="r1", expires_at=time.time() + 900)
    fake.on("GET", "/v1/auth/me", _me("a2"))
    fake.on("POST", "/v1/auth/refresh", lambda _r: problem(401, "UNAUTHORIZED", "reused"))
    client = Client(URL, config_dir=store.directory, transport=httpx.MockTransport(fake))
    # Meanwhile another llmreg refreshed and stored its new pair.
    store.save(
        URL,
        Credentials(
            username="alice", access_token="a2", refresh_token="r2", expires_at=time.time() + 900
        ),
    )
    assert client.me()["username"] == "alice"
    assert fake.calls("POST", "/v1/auth/refresh") == []


def test_login_stores_the_pair_never_the_password(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.on(
        "POST",
        "/v1/auth/login",
        httpx.Response(
            200,
            json={
                "access_token": "a1",
                "refresh_token": "r1",
                "token_type": "Bearer",
                "expires_in": 60,
                "user": {"id": "U", "username": "alice", "roles": ["user"]},
            },
        ),
    )
    client = Client(URL, config_dir=tmp_path / "cfg", transport=httpx.MockTransport(fake))
    client.login("alice", "s3cret-password")
    text = (tmp_path / "cfg" / "config.json").read_text()
    assert "s3cret-password" not in text
    saved = json.loads(text)
    assert saved["current"] == URL
    entry = saved["servers"][URL]
    assert (entry["access_token"], entry["refresh_token"], entry["username"]) == (
        "a1",
        "r1",
        "alice",
    )
    assert 50 < entry["expires_at"] - time.time() <= 60


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    store = _stored(tmp_path, access_token="a1", refresh_token="r1")
    env = {"LLMREG_CONFIG_DIR": str(store.directory)}
    assert resolve_settings(environ=env).credentials.access_token == "a1"
    keyed = resolve_settings(environ={**env, "LLMREG_API_KEY": "llmr_x"})
    assert keyed.credentials.api_key == "llmr_x" and keyed.store is None
    other = resolve_settings(environ={**env, "LLMREG_URL": "other:9000", "LLMREG_TOKEN": "tok"})
    assert other.url == "http://other:9000" and other.credentials.access_token == "tok"


def test_api_key_requests_are_signed_as_the_server_checks_them(fake: FakeRegistry) -> None:
    fake.on("GET", "/v1/assets", httpx.Response(200, json={"items": [], "next_cursor": None}))
    fake.on("POST", "/v1/auth/api-keys", httpx.Response(201, json={"id": "K", "key": "llmr_y"}))
    client = Client(
        URL, api_key="llmr_k", signing_secret="sekrit", transport=httpx.MockTransport(fake)
    )
    list(client.list_assets(asset_type="model", page_size=5))
    client.create_api_key("ci")
    for request in fake.requests:
        assert request.headers["X-API-Key"] == "llmr_k"
        assert "Authorization" not in request.headers
        path = request.url.raw_path.decode()
        expected = signature_for(
            "sekrit",
            request.method,
            path,
            request.headers["X-Signature-Timestamp"],
            hashlib.sha256(request.content).hexdigest(),
        )
        assert request.headers["X-Signature"] == expected
    assert fake.requests[0].url.raw_path.decode() == "/v1/assets?asset_type=model&limit=5"


# ---- lists, jobs, events -------------------------------------------------------------------------


def test_lists_follow_next_cursor_and_stop_at_the_limit(fake: FakeRegistry) -> None:
    pages = {
        None: ([{"id": "1"}, {"id": "2"}], "c2"),
        "c2": ([{"id": "3"}, {"id": "4"}], "c3"),
        "c3": ([{"id": "5"}], None),
    }

    def page(request: httpx.Request) -> httpx.Response:
        items, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(
            200, json={"items": items, "total": 5, "limit": 2, "next_cursor": cursor}
        )

    fake.on("GET", "/v1/assets", page)
    client = fake.client()
    assert [a["id"] for a in client.list_assets(tags=["a", "b"], page_size=2)] == list("12345")
    assert fake.requests[0].url.params.get_list("tag") == ["a", "b"]
    fake.requests.clear()
    assert [a["id"] for a in client.list_assets(page_size=2, limit=3)] == ["1", "2", "3"]
    assert len(fake.requests) == 2  # no page fetched past the limit


def test_the_event_feed_pages_with_after(fake: FakeRegistry) -> None:
    def feed(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        assert "cursor" not in request.url.params
        items = {None: [{"id": "E1"}, {"id": "E2"}], "E2": [{"id": "E3"}], "E3": []}[after]
        nxt = "E2" if after is None else None
        return httpx.Response(
            200, json={"items": items, "total": 3, "limit": 2, "next_cursor": nxt}
        )

    fake.on("GET", "/v1/events", feed)
    client = fake.client()
    assert [e["id"] for e in client.list_events(page_size=2)] == ["E1", "E2", "E3"]
    assert [e["id"] for e in client.tail_events(after="E2", follow=False)] == ["E3"]


def test_wait_for_job_gives_up_at_its_timeout(fake: FakeRegistry) -> None:
    fake.on("GET", "/v1/jobs/J", httpx.Response(200, json={"id": "J", "status": "running"}))
    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as caught:
        fake.client().wait_for_job("J", timeout=0.3, poll_interval=0.05)
    assert 0.3 <= time.monotonic() - started < 2
    assert caught.value.job["status"] == "running"
    assert isinstance(caught.value, TimeoutError)


def test_wait_for_job_returns_the_finished_job(fake: FakeRegistry) -> None:
    states = iter(["queued", "running", "succeeded"])
    fake.on("GET", "/v1/jobs/J", lambda _r: httpx.Response(200, json={"status": next(states)}))
    assert fake.client().wait_for_job("J", poll_interval=0.01)["status"] == "succeeded"


# ---- downloads -----------------------------------------------------------------------------------

PAYLOAD = b"weights " * 50_000
SHA = hashlib.sha256(PAYLOAD).hexdigest()
ASSET = {
    "id": "01ASSET0000000000000000000",
    "name": "acme/m",
    "version": "1.0.0",
    "checksum": {"algorithm": "SHA256", "value": SHA},
    "annotations": {},
}


def _content(body: bytes | Callable[[], Iterator[bytes]], digest: str = SHA) -> Handler:
    def answer(_request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else body()
        headers = {"X-Checksum-SHA256": digest}
        return httpx.Response(200, content=content, headers=headers)

    return answer


def test_a_download_is_verified_then_renamed(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.on("GET", f"/v1/assets/{ASSET['id']}/content", _content(PAYLOAD))
    fake.on("GET", "/v1/assets/acme/m/versions/1.0.0", httpx.Response(200, json=ASSET))
    seen: list[int] = []
    dest = fake.client().download_asset(
        "acme/m@1.0.0", tmp_path / "m.bin", progress=lambda d, _t: seen.append(d)
    )
    assert dest.read_bytes() == PAYLOAD
    assert seen[-1] == len(PAYLOAD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_corrupt_bytes_are_never_kept(fake: FakeRegistry, tmp_path: Path) -> None:
    rotten = PAYLOAD[:-1] + b"X"
    fake.on("GET", f"/v1/assets/{ASSET['id']}/content", _content(rotten))
    dest = tmp_path / "m.bin"
    dest.write_bytes(b"the previous good file")
    with pytest.raises(ChecksumMismatchError) as caught:
        fake.client().download_asset(ASSET, dest)  # type: ignore[arg-type]
    assert caught.value.expected == SHA
    assert caught.value.actual == hashlib.sha256(rotten).hexdigest()
    assert dest.read_bytes() == b"the previous good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_a_broken_download_leaves_no_file(fake: FakeRegistry, tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield PAYLOAD[:1000]
        raise httpx.ReadError("connection reset")

    fake.on("GET", f"/v1/assets/{ASSET['id']}/content", _content(chunks))
    with pytest.raises(ConnectionFailedError):
        fake.client().download_asset(ASSET, tmp_path / "m.bin")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_disagrees_with_the_registration_is_refused(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.on("GET", f"/v1/assets/{ASSET['id']}/content", _content(PAYLOAD, digest="0" * 64))
    with pytest.raises(ChecksumMismatchError):
        fake.client().download_asset(ASSET, tmp_path / "m.bin")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_uploads_stream_the_file_with_its_checksum(fake: FakeRegistry, tmp_path: Path) -> None:
    source = tmp_path / "w.bin"
    source.write_bytes(PAYLOAD)

    def store(request: httpx.Request) -> httpx.Response:
        body = request.read()
        assert hashlib.sha256(body).hexdigest() == request.headers["X-Checksum-SHA256"] == SHA
        assert request.headers["Content-Length"] == str(len(PAYLOAD))
        assert "Transfer-Encoding" not in request.headers
        digest = f"sha256:{SHA}"
        return httpx.Response(201, json={"digest": digest, "size_bytes": len(body), "uri": "u"})

    fake.on("POST", "/v1/blobs", store)
    assert fake.client().upload_blob(source)["size_bytes"] == len(PAYLOAD)


# ---- references ----------------------------------------------------------------------------------


def test_references_and_dependencies_parse() -> None:
    assert parse_ref("acme/m@1.0.0") == (None, "acme/m", "1.0.0")
    assert parse_ref("acme/m@latest") == (None, "acme/m", None)
    assert parse_ref("acme/m") == (None, "acme/m", None)
    assert parse_ref("01J9ZX3A4B5C6D7E8F9G0H1J2K") == ("01J9ZX3A4B5C6D7E8F9G0H1J2K", None, None)
    assert parse_dependency("acme/base@^1.0") == {"name": "acme/base", "version": "^1.0"}
    assert parse_dependency("acme/base@>=1.0.0 <2.0.0") == {
        "name": "acme/base",
        "version": ">=1.0.0 <2.0.0",
    }
    assert parse_dependency("acme/base") == {"name": "acme/base", "version": "*"}
    assert parse_dependency("01J9ZX3A4B5C6D7E8F9G0H1J2K") == {"id": "01J9ZX3A4B5C6D7E8F9G0H1J2K"}
    for bad in ("@1.0.0", "acme/m@"):
        with pytest.raises(InvalidReferenceError):
            parse_ref(bad)


# ---- the CLI's exit codes ------------------------------------------------------------------------


def _job(status: str, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": "J1", "kind": "registration", "asset_id": ASSET["id"], "status": status,
            "steps": steps or [], "error": None}  # fmt: skip


@pytest.fixture
def push_registry(fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    """A registry that accepts a push and serves job J1 as the test scripts it."""
    fake.on("HEAD", f"/v1/blobs/sha256:{SHA}", problem(404, "NOT_FOUND"))
    fake.on(
        "POST",
        "/v1/blobs",
        httpx.Response(201, json={"digest": f"sha256:{SHA}", "size_bytes": 1, "uri": "file:///b"}),
    )
    registered = {**ASSET, "status": "pending", "job": {"id": "J1", "status": "queued", "href": ""}}
    fake.on("POST", "/v1/assets", httpx.Response(202, json=registered))
    monkeypatch.setattr(llmreg.cli, "_client", fake.client)
    return fake


def _push(tmp_path: Path, *extra: str) -> Any:
    source = tmp_path / "w.bin"
    source.write_bytes(PAYLOAD)
    args = ["push", str(source), "-n", "acme/m", "--version", "1.0.0", *extra]
    return CliRunner().invoke(llmreg.cli.app, args)


def test_cli_exits_6_when_no_verdict_comes_in_time(
    push_registry: FakeRegistry, tmp_path: Path
) -> None:
    push_registry.on("GET", "/v1/jobs/J1", httpx.Response(200, json=_job("running")))
    result = _push(tmp_path, "--timeout", "0.2")
    assert result.exit_code == 6, result.output
    assert "timed out" in result.output and "llmreg jobs J1 --wait" in result.output


def test_cli_exits_5_with_the_failing_step_on_a_rejection(
    push_registry: FakeRegistry, tmp_path: Path
) -> None:
    steps = [
        {"name": "checksum", "status": "passed", "detail": "SHA256 matches"},
        {"name": "scan", "status": "failed", "detail": "pickle imports os.system"},
    ]
    push_registry.on("GET", "/v1/jobs/J1", httpx.Response(200, json=_job("succeeded", steps)))
    rejection = {"code": "UNSAFE_CONTENT", "message": "os.system", "step": "scan"}
    push_registry.on(
        "GET",
        f"/v1/assets/{ASSET['id']}",
        httpx.Response(200, json={**ASSET, "status": "rejected", "rejection": rejection}),
    )
    result = _push(tmp_path)
    assert result.exit_code == 5, result.output
    assert "acme/m@1.0.0 was rejected (UNSAFE_CONTENT)" in result.output
    assert "step scan failed: pickle imports os.system" in result.output
    assert len(push_registry.calls("POST", "/v1/blobs")) == 1


def test_cli_exit_codes_for_errors(fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llmreg.cli, "_client", fake.client)
    fake.on("GET", "/v1/auth/me", problem(401, "UNAUTHORIZED"))
    fake.on("GET", "/v1/assets/acme/m/versions/9.0.0", problem(404, "NOT_FOUND", "no such version"))
    fake.on("GET", "/v1/assets", problem(403, "FORBIDDEN"))
    runner = CliRunner()
    assert runner.invoke(llmreg.cli.app, ["whoami"]).exit_code == 4
    missing = runner.invoke(llmreg.cli.app, ["show", "acme/m@9.0.0", "-o", "json"])
    assert missing.exit_code == 3
    assert json.loads(missing.output)["error"]["code"] == "NOT_FOUND"
    assert runner.invoke(llmreg.cli.app, ["ls"]).exit_code == 4
    assert runner.invoke(llmreg.cli.app, ["show", "@1"]).exit_code == 2
    assert runner.invoke(llmreg.cli.app, ["pull", "x", "--limit-rate", "fast"]).exit_code == 2
