"""The Python client: one method per endpoint of CONTRACT.md, plus the few compositions users
want (``push_file``, ``download_asset``, ``wait_for_job``, iterators over every list).

    from llmreg import Client

    reg = Client()                          # URL and credentials from `llmreg login` / env
    asset = reg.push_file("model.safetensors", asset_type="model", name="acme/llama",
                          version="1.0.0", license="MIT").asset
    reg.download_asset("acme/llama@1.0.0", "copy.safetensors")
    for a in reg.list_assets(asset_type="model", tags=["chat"]):
        print(a["name"], a["version"], a["status"])

Authentication is the client's business: with a login's token pair it refreshes the access
token shortly before it expires, and once more on a 401, storing the rotated pair (refresh
tokens are single use) in the config file under a lock shared by every process using it.
Errors from the server are raised as ``llmreg.errors.RegistryError`` subclasses chosen by the
problem's ``code``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx

from llmreg._version import __version__
from llmreg.config import (
    DEFAULT_URL,
    ConfigStore,
    Credentials,
    normalize_url,
    resolve_settings,
)
from llmreg.errors import (
    ChecksumMismatchError,
    ConnectionFailedError,
    InvalidReferenceError,
    JobTimeoutError,
    LlmregError,
    NotFoundError,
    RequestTimeoutError,
    UnauthorizedError,
    error_from_response,
)
from llmreg.transfer import Pacer, Progress, file_chunks, sha256_file, write_verified
from llmreg.types import (
    ApiKey,
    Asset,
    Blob,
    ComplianceReport,
    CreatedApiKey,
    Event,
    Graph,
    Health,
    Job,
    LoginResult,
    Me,
    Page,
    RegisteredAsset,
    ScanStarted,
    TestRun,
    TokenPair,
    User,
    Version,
)

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
FINISHED_JOB = ("succeeded", "failed")
# Refresh this long before the access token's expiry, so it does not lapse in flight.
REFRESH_MARGIN_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 60.0
_IDEMPOTENT = frozenset({"GET", "HEAD"})


def parse_ref(ref: str) -> tuple[str | None, str | None, str | None]:
    """``(id, name, version)`` of an asset reference: an id (``01J...``), ``NAME@VERSION``,
    ``NAME@latest`` or a bare ``NAME`` (its latest active version; version None)."""
    ref = ref.strip()
    if "@" in ref:
        name, _, version = ref.partition("@")
        if not name or not version:
            raise InvalidReferenceError(f"{ref!r} is not NAME@VERSION")
        return None, name, None if version == "latest" else version
    if ULID.fullmatch(ref):
        return ref, None, None
    return None, ref, None


def parse_dependency(spec: str) -> dict[str, str]:
    """``name@^1.0`` -> ``{"name", "version"}`` (a bare name means ``*``); an asset id ->
    ``{"id"}``. Names are lower case, so an id (upper-case ULID) cannot be mistaken for one."""
    spec = spec.strip()
    if ULID.fullmatch(spec):
        return {"id": spec}
    name, _, version = spec.partition("@")
    if not name:
        raise InvalidReferenceError(f"{spec!r} is not NAME@RANGE")
    return {"name": name, "version": version.strip() or "*"}


def _quote_name(name: str) -> str:
    # Names hold at most one "/" (org/model); the routes take it raw.
    return quote(name, safe="/")


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None and v != [] and v is not False}


@dataclass
class PushResult:
    """What ``push_file`` did: the asset as last read, its job, and whether bytes were sent."""

    asset: Asset
    job: Job | None
    uploaded: bool
    sha256: str

    @property
    def rejected(self) -> bool:
        return self.asset["status"] == "rejected"


class Client:
    """A connection to one registry.

    With no credentials given, the URL and credentials come from the environment and the config
    file that ``llmreg login`` writes (``llmreg.config``); rotated tokens are saved back there.
    Give ``api_key=`` (``llmr_...``; plus ``signing_secret=`` for a signing key) or
    ``token=``/``refresh_token=`` to use those instead and leave the file alone.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        refresh_token: str | None = None,
        signing_secret: str | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        timeout: float | httpx.Timeout = 30.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        on_tokens: Callable[[TokenPair], None] | None = None,
    ) -> None:
        explicit = api_key is not None or token is not None or refresh_token is not None
        if explicit:
            self.url = normalize_url(url or os.environ.get("LLMREG_URL") or DEFAULT_URL)
            self._creds = Credentials(
                access_token=token,
                refresh_token=refresh_token,
                api_key=api_key,
                signing_secret=signing_secret,
            )
            self._persist = False
        else:
            settings = resolve_settings(url, store=ConfigStore(config_dir))
            self.url = settings.url
            self._creds = settings.credentials
            # Credentials from the environment are not the file's: never write them there.
            self._persist = settings.store is not None
        self.config = ConfigStore(config_dir)
        self.max_retries = max_retries
        self._on_tokens = on_tokens
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            verify=verify,
            headers={"User-Agent": f"llmreg/{__version__} httpx/{httpx.__version__}"},
            follow_redirects=False,
        )

    # ---- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def credentials(self) -> Credentials:
        return self._creds

    @property
    def authenticated(self) -> bool:
        return bool(self._creds.api_key or self._creds.access_token)

    def _auth_headers(self) -> dict[str, str]:
        if self._creds.api_key:
            return {"X-API-Key": self._creds.api_key}
        if self._creds.access_token:
            return {"Authorization": f"Bearer {self._creds.access_token}"}
        return {}

    def _expiring(self) -> bool:
        c = self._creds
        return bool(
            not c.api_key
            and c.refresh_token
            and c.expires_at is not None
            and time.time() >= c.expires_at - REFRESH_MARGIN_SECONDS
        )

    def _sign(self, request: httpx.Request, body_sha256: str | None) -> None:
        secret = self._creds.signing_secret
        if not (self._creds.api_key and secret):
            return
        if body_sha256 is None:
            body_sha256 = hashlib.sha256(request.content).hexdigest()
        timestamp = str(int(time.time()))
        path = request.url.raw_path.decode("ascii")
        message = f"{request.method}\n{path}\n{timestamp}\n{body_sha256}".encode()
        request.headers["X-Signature-Timestamp"] = timestamp
        request.headers["X-Signature"] = hmac.new(
            secret.encode(), message, hashlib.sha256
        ).hexdigest()

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(f"{self.url} did not answer in time ({exc})") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"cannot reach {self.url}: {exc}") from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        body: Callable[[], Iterable[bytes]] | None = None,
        body_sha256: str | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authenticated: bool = True,
    ) -> httpx.Response:
        """Send one request; raise the matching ``RegistryError`` for an error answer.

        ``body`` is a factory of a streamed body (called again if the request must be resent
        after a token refresh). A 401 with a refreshable login refreshes and retries once; a
        429 or 503 to a GET or HEAD is retried after ``Retry-After`` (up to ``max_retries``).
        With ``stream=True`` the caller reads and closes the response.
        """
        method = method.upper()
        refreshed = False
        attempt = 0
        while True:
            if authenticated and self._expiring():
                self.refresh()
            request = self._http.build_request(
                method,
                path,
                params=_clean(params or {}),
                json=json,
                content=body() if body is not None else content,
                headers={**(self._auth_headers() if authenticated else {}), **(headers or {})},
            )
            if authenticated:
                self._sign(request, body_sha256)
            response = self._send(request)
            status = response.status_code
            if (
                status == 401
                and authenticated
                and not refreshed
                and self._creds.refresh_token
                and not self._creds.api_key
            ):
                response.close()
                self.refresh()
                refreshed = True
                continue
            if status in (429, 503) and method in _IDEMPOTENT and attempt < self.max_retries:
                delay = _retry_after(response, attempt)
                if delay <= MAX_RETRY_AFTER_SECONDS:
                    response.close()
                    time.sleep(delay)
                    attempt += 1
                    continue
            if status >= 400 or not stream:
                try:
                    response.read()
                except httpx.TransportError as exc:
                    raise ConnectionFailedError(
                        f"the answer from {self.url} broke off: {exc}"
                    ) from exc
                finally:
                    response.close()
            if status >= 400:
                raise error_from_response(response)
            return response

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def _paginate(
        self, path: str, params: Mapping[str, Any], limit: int | None, cursor_param: str = "cursor"
    ) -> Iterator[Any]:
        """Every item of a list endpoint, following ``next_cursor``; at most ``limit``."""
        params = dict(params)
        yielded = 0
        while True:
            page: Page[Any] = self.request("GET", path, params=params).json()
            for item in page["items"]:
                if limit is not None and yielded >= limit:
                    return
                yield item
                yielded += 1
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and yielded >= limit):
                return
            params[cursor_param] = cursor

    # ---- authentication ------------------------------------------------------------------------

    def login(self, username: str, password: str, *, save: bool = True) -> LoginResult:
        """Log in with a password; the client then uses (and refreshes) the new token pair. With
        ``save`` and a config file in use, the pair is stored for later processes too."""
        result: LoginResult = self.request(
            "POST",
            "/v1/auth/login",
            json={"username": username, "password": password},
            authenticated=False,
        ).json()
        self._creds = Credentials(username=username)
        self._adopt(result)
        if save:
            self.save_credentials()
        return result

    def use_api_key(self, api_key: str, signing_secret: str | None = None) -> None:
        """Authenticate later requests with an API key (not saved; see ``save_credentials``)."""
        self._creds = Credentials(api_key=api_key, signing_secret=signing_secret)

    def save_credentials(self) -> None:
        """Store the current credentials for this URL in the config file, as ``login`` does."""
        with self.config.lock():
            self.config.save(self.url, self._creds)
        self._persist = True

    def _adopt(self, pair: TokenPair) -> None:
        self._creds.access_token = pair["access_token"]
        self._creds.refresh_token = pair["refresh_token"]
        self._creds.expires_at = time.time() + float(pair.get("expires_in") or 0)
        self._creds.api_key = None
        if self._on_tokens:
            self._on_tokens(pair)

    def refresh(self) -> TokenPair | None:
        """Trade the refresh token for a new pair (refresh tokens rotate: each works once).

        Under the config file's lock, the file is read first: when another process already
        rotated the pair, that pair is adopted instead of spending the old refresh token again
        (which would end the whole login). Returns the new pair, or None when one was adopted.
        """
        held = self._creds.refresh_token
        if not held:
            raise UnauthorizedError(401, "UNAUTHORIZED", "Unauthorized", "no refresh token held")
        lock = self.config.lock() if self._persist else contextlib.nullcontext()
        with lock:
            if self._persist:
                stored = self.config.credentials(self.url)
                if stored and stored.refresh_token and stored.refresh_token != held:
                    self._creds = stored
                    if not self._expiring():
                        return None
                    held = stored.refresh_token
                    assert held is not None
            pair: TokenPair = self.request(
                "POST", "/v1/auth/refresh", json={"refresh_token": held}, authenticated=False
            ).json()
            self._adopt(pair)
            if self._persist:
                self.config.save(self.url, self._creds, make_current=False)
        return pair

    def logout(self, *, forget: bool = True) -> None:
        """End this login on the server (every token of it stops working) and, with
        ``forget``, remove the stored credentials for this URL."""
        if self.authenticated:
            with contextlib.suppress(UnauthorizedError):
                self.request("POST", "/v1/auth/logout")
        self._creds = Credentials()
        if forget and self._persist:
            with self.config.lock():
                self.config.save(self.url, None, make_current=False)

    def me(self) -> Me:
        return cast(Me, self._get("/v1/auth/me"))

    def create_api_key(
        self,
        name: str,
        *,
        role: str | None = None,
        expires_in_days: int | None = None,
        signing: bool = False,
    ) -> CreatedApiKey:
        """A new API key; ``key`` (and ``signing_secret``) are shown only in this answer."""
        body: dict[str, Any] = {"name": name, "signing": signing}
        if role is not None:
            body["role"] = role
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return cast(CreatedApiKey, self.request("POST", "/v1/auth/api-keys", json=body).json())

    def list_api_keys(self) -> Iterator[ApiKey]:
        return self._paginate("/v1/auth/api-keys", {}, None)

    def delete_api_key(self, key_id: str) -> None:
        self.request("DELETE", f"/v1/auth/api-keys/{quote(key_id, safe='')}")

    # ---- users (admin) -------------------------------------------------------------------------

    def create_user(self, username: str, password: str, roles: Sequence[str]) -> User:
        body = {"username": username, "password": password, "roles": list(roles)}
        return cast(User, self.request("POST", "/v1/users", json=body).json())

    def list_users(self, *, page_size: int = 100, limit: int | None = None) -> Iterator[User]:
        return self._paginate("/v1/users", {"limit": page_size}, limit)

    def get_user(self, user_id: str) -> User:
        return cast(User, self._get(f"/v1/users/{quote(user_id, safe='')}"))

    def update_user(self, user_id: str, **changes: Any) -> User:
        """``roles``, ``disabled``, ``password`` (with ``current_password`` for your own)."""
        path = f"/v1/users/{quote(user_id, safe='')}"
        return cast(User, self.request("PATCH", path, json=changes).json())

    # ---- blobs ---------------------------------------------------------------------------------

    def blob_exists(self, sha256: str) -> int | None:
        """The size of the blob with this SHA-256 when the registry has it, else None."""
        try:
            response = self.request("HEAD", f"/v1/blobs/sha256:{sha256.lower()}")
        except NotFoundError:
            return None
        return int(response.headers.get("Content-Length", "0"))

    def upload_blob(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        sha256: str | None = None,
        progress: Progress | None = None,
        rate: float | None = None,
    ) -> Blob:
        """Upload a file (streamed, never held in memory) or bytes. The SHA-256 is computed
        first unless given and sent as ``X-Checksum-SHA256``: bytes that arrive different are
        refused by the server (``ValidationFailedError``) and nothing is kept."""
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(source, bytes):
            digest = sha256 or hashlib.sha256(source).hexdigest()
            headers["X-Checksum-SHA256"] = digest
            response = self.request(
                "POST", "/v1/blobs", content=source, headers=headers, body_sha256=digest
            )
            return cast(Blob, response.json())
        path = Path(source)
        digest = sha256 or sha256_file(path)
        headers["X-Checksum-SHA256"] = digest
        # An explicit length: the body is sent as it is read, but not chunked.
        headers["Content-Length"] = str(path.stat().st_size)
        response = self.request(
            "POST",
            "/v1/blobs",
            body=lambda: file_chunks(path, progress, rate),
            headers=headers,
            body_sha256=digest,
        )
        return cast(Blob, response.json())

    def download_blob(
        self,
        sha256: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        rate: float | None = None,
    ) -> Path:
        """Download a blob to ``dest`` (see ``download_asset`` for the guarantees)."""
        digest = sha256.lower().removeprefix("sha256:")
        return self._download(f"/v1/blobs/sha256:{digest}", Path(dest), digest, progress, rate)

    # ---- assets --------------------------------------------------------------------------------

    def register_asset(
        self,
        asset_type: str,
        name: str,
        version: str,
        *,
        description: str | None = None,
        license: str | None = None,
        tags: Sequence[str] | None = None,
        annotations: Mapping[str, str] | None = None,
        content_type: str | None = None,
        size_bytes: int | None = None,
        checksum: Mapping[str, str] | None = None,
        storage: Mapping[str, str] | None = None,
        provenance: Mapping[str, Any] | None = None,
        dependencies: Sequence[Mapping[str, str]] | None = None,
        spec: Mapping[str, Any] | None = None,
    ) -> RegisteredAsset:
        """``POST /v1/assets``: 202 with the pending asset and ``job`` (see ``wait_for_job``)."""
        body: dict[str, Any] = {"asset_type": asset_type, "name": name, "version": version}
        optional: dict[str, Any] = {
            "description": description,
            "license": license,
            "tags": list(tags) if tags is not None else None,
            "annotations": dict(annotations) if annotations is not None else None,
            "content_type": content_type,
            "size_bytes": size_bytes,
            "checksum": dict(checksum) if checksum is not None else None,
            "storage": dict(storage) if storage is not None else None,
            "provenance": dict(provenance) if provenance is not None else None,
            "dependencies": [dict(d) for d in dependencies] if dependencies is not None else None,
            "spec": dict(spec) if spec is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return cast(RegisteredAsset, self.request("POST", "/v1/assets", json=body).json())

    def get_asset(self, asset_id: str, *, include_deleted: bool = False) -> Asset:
        path = f"/v1/assets/{quote(asset_id, safe='')}"
        params = {"include_deleted": "true"} if include_deleted else {}
        return cast(Asset, self.request("GET", path, params=params).json())

    def get_version(self, name: str, version: str) -> Asset:
        path = f"/v1/assets/{_quote_name(name)}/versions/{quote(version, safe='')}"
        return cast(Asset, self._get(path))

    def latest_version(self, name: str) -> Asset:
        """The highest active release (else pre-release) of ``name``."""
        return cast(Asset, self._get(f"/v1/assets/{_quote_name(name)}/versions/latest"))

    def resolve(self, ref: str) -> Asset:
        """The asset an id, ``NAME@VERSION``, ``NAME@latest`` or ``NAME`` names."""
        asset_id, name, version = parse_ref(ref)
        if asset_id:
            return self.get_asset(asset_id)
        assert name is not None
        return self.get_version(name, version) if version else self.latest_version(name)

    def list_assets(
        self,
        *,
        asset_type: str | None = None,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        status: str | None = None,
        compliance: str | None = None,
        author: str | None = None,
        q: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        sort: str | None = None,
        order: str | None = None,
        include_deleted: bool = False,
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[Asset]:
        """Every matching asset, following ``next_cursor`` page by page (at most ``limit``)."""
        params = {
            "asset_type": asset_type,
            "name": name,
            "tag": list(tags or []),
            "status": status,
            "compliance": compliance,
            "author": author,
            "q": q,
            "created_after": created_after,
            "created_before": created_before,
            "sort": sort,
            "order": order,
            "include_deleted": "true" if include_deleted else None,
            "limit": page_size,
        }
        return self._paginate("/v1/assets", params, limit)

    def list_versions(
        self, name: str, *, page_size: int = 100, limit: int | None = None
    ) -> Iterator[Asset]:
        """Every version of ``name``, highest SemVer first."""
        path = f"/v1/assets/{_quote_name(name)}/versions"
        return self._paginate(path, {"limit": page_size}, limit)

    def update_asset(self, asset_id: str, *, if_match: str | None = None, **changes: Any) -> Asset:
        """PATCH ``description``, ``license``, ``tags``, ``annotations`` (merged; None deletes a
        key) or ``status``. ``if_match`` (an ETag) refuses a lost update with 412."""
        headers = {"If-Match": if_match} if if_match else {}
        path = f"/v1/assets/{quote(asset_id, safe='')}"
        return cast(Asset, self.request("PATCH", path, json=changes, headers=headers).json())

    def delete_asset(self, asset_id: str, *, force: bool = False) -> None:
        path = f"/v1/assets/{quote(asset_id, safe='')}"
        self.request("DELETE", path, params={"force": "true"} if force else {})

    def dependencies(self, asset_id: str, *, max_depth: int | None = None) -> Graph:
        """The locked dependency graph below an asset (the root is the node at depth 0)."""
        path = f"/v1/assets/{quote(asset_id, safe='')}/dependencies"
        return cast(Graph, self._get(path, max_depth=max_depth))

    def dependents(self, asset_id: str, *, max_depth: int | None = None) -> Graph:
        """The assets that depend on this one, transitively (same shape as ``dependencies``)."""
        path = f"/v1/assets/{quote(asset_id, safe='')}/dependents"
        return cast(Graph, self._get(path, max_depth=max_depth))

    def compliance(self, asset_id: str) -> ComplianceReport:
        path = f"/v1/assets/{quote(asset_id, safe='')}/compliance"
        return cast(ComplianceReport, self._get(path))

    def list_test_runs(
        self, asset_id: str, *, page_size: int = 100, limit: int | None = None
    ) -> Iterator[TestRun]:
        path = f"/v1/assets/{quote(asset_id, safe='')}/test-runs"
        return self._paginate(path, {"limit": page_size}, limit)

    def start_compliance_scan(
        self, *, asset_type: str | None = None, policy_id: str | None = None
    ) -> ScanStarted:
        """(admin) Re-check active assets against the current policies; returns the job."""
        body = _clean({"asset_type": asset_type, "policy_id": policy_id})
        return cast(ScanStarted, self.request("POST", "/v1/compliance/scans", json=body).json())

    def download_asset(
        self,
        asset: str | Asset,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        rate: float | None = None,
    ) -> Path:
        """Stream an asset's content to ``dest`` (a reference as ``resolve`` takes, or the
        asset document), hashing while writing.

        The bytes go to ``DEST.part`` and are renamed to ``dest`` only once their SHA-256 is the
        registry's; on a mismatch (``ChecksumMismatchError``), a broken connection or an
        interrupt the part file is deleted and ``dest`` is untouched. ``rate`` caps the speed
        in bytes per second.
        """
        doc = self.resolve(asset) if isinstance(asset, str) else asset
        checksum = doc.get("checksum")
        if not checksum:
            raise NotFoundError(
                404, "NOT_FOUND", "Not Found", f"{doc['name']}@{doc['version']} has no content"
            )
        expected = checksum["value"] if checksum["algorithm"] == "SHA256" else None
        path = f"/v1/assets/{quote(doc['id'], safe='')}/content"
        return self._download(path, Path(dest), expected, progress, rate)

    def _download(
        self,
        path: str,
        dest: Path,
        expected: str | None,
        progress: Progress | None,
        rate: float | None,
    ) -> Path:
        response = self.request("GET", path, stream=True)
        try:
            promised = response.headers.get("X-Checksum-SHA256")
            if expected and promised and promised.lower() != expected.lower():
                # The store and the registration disagree: trust neither.
                raise ChecksumMismatchError(expected.lower(), promised.lower(), f"{path} (stored)")
            expected = expected or promised
            if not expected:
                raise LlmregError(f"{path} came without a SHA-256 to verify it against")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            chunk_size = Pacer(rate).chunk_size()
            try:
                return write_verified(
                    response.iter_bytes(chunk_size),
                    dest,
                    expected,
                    total=total,
                    progress=progress,
                    rate=rate,
                )
            except httpx.TransportError as exc:
                raise ConnectionFailedError(
                    f"the download from {self.url} broke off: {exc}"
                ) from exc
        finally:
            response.close()

    def push_file(
        self,
        path: str | os.PathLike[str],
        *,
        asset_type: str,
        name: str,
        version: str,
        wait: bool = True,
        timeout: float = 600.0,
        progress: Progress | None = None,
        **fields: Any,
    ) -> PushResult:
        """Hash a file, upload it unless the registry already has those bytes, register
        ``name@version`` with its checksum and, with ``wait``, wait for the verdict.

        ``fields`` are ``register_asset``'s (``license``, ``tags``, ``dependencies``, ...).
        Raises ``JobTimeoutError`` when no verdict came within ``timeout`` seconds.
        """
        path = Path(path)
        digest = sha256_file(path)
        size = path.stat().st_size
        uploaded = self.blob_exists(digest) is None
        storage = None
        if uploaded:
            blob = self.upload_blob(path, sha256=digest, progress=progress)
            storage = {"uri": blob["uri"]}
        registered = self.register_asset(
            asset_type,
            name,
            version,
            size_bytes=size,
            checksum={"algorithm": "SHA256", "value": digest},
            storage=storage,
            **fields,
        )
        job = self.wait_for_job(registered["job"]["id"], timeout=timeout) if wait else None
        asset = self.get_asset(registered["id"]) if wait else cast(Asset, registered)
        return PushResult(asset, job, uploaded, digest)

    # ---- jobs ----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self._get(f"/v1/jobs/{quote(job_id, safe='')}"))

    def list_jobs(
        self,
        *,
        asset_id: str | None = None,
        status: str | None = None,
        kind: str | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[Job]:
        params = {"asset_id": asset_id, "status": status, "kind": kind, "limit": page_size}
        return self._paginate("/v1/jobs", params, limit)

    def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 2.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll a job until it ``succeeded`` (ran to a verdict: read the asset's ``status``) or
        ``failed`` (could not run; see ``error``). The interval grows from ``poll_interval``
        to ``max_poll_interval``. ``JobTimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            job = self.get_job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in FINISHED_JOB:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeoutError(
                    f"job {job_id} is still {job['status']} after {timeout:g} s", job
                )
            time.sleep(min(interval, left))
            interval = min(interval * 1.5, max_poll_interval)

    # ---- events --------------------------------------------------------------------------------

    def list_events(
        self,
        *,
        after: str | None = None,
        type: str | None = None,
        asset_id: str | None = None,
        page_size: int = 200,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """Events oldest first, from after the event ``after`` up to the newest visible."""
        params = {"after": after, "type": type, "asset_id": asset_id, "limit": page_size}
        # The feed's next_cursor is the last event id: the next page is "after" it.
        return self._paginate("/v1/events", params, limit, cursor_param="after")

    def tail_events(
        self,
        *,
        after: str | None = None,
        type: str | None = None,
        asset_id: str | None = None,
        poll_interval: float = 1.0,
        follow: bool = True,
    ) -> Iterator[Event]:
        """``list_events``, then (with ``follow``) poll for new ones for ever: each poll asks
        for events after the last one seen, so none is skipped or repeated."""
        last = after
        while True:
            for event in self.list_events(after=last, type=type, asset_id=asset_id):
                last = event["id"]
                yield event
            if not follow:
                return
            time.sleep(poll_interval)

    # ---- operations ----------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health`` (answered even when unhealthy, with its 503 body)."""
        response = self._send(self._http.build_request("GET", "/health"))
        try:
            response.read()
        finally:
            response.close()
        return cast(Health, response.json())

    def version(self) -> Version:
        return cast(Version, self.request("GET", "/version", authenticated=False).json())


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return min(2.0**attempt, MAX_RETRY_AFTER_SECONDS)
