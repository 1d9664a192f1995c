"""Where the client keeps its server URL and credentials, and how the environment overrides them.

One JSON file, ``config.json`` in ``$LLMREG_CONFIG_DIR`` (else ``$XDG_CONFIG_HOME/llmreg``, else
``~/.config/llmreg``), readable by its owner only (0600, in a 0700 folder)::

    {"current": "http://localhost:8080",
     "servers": {"http://localhost:8080": {"username": "admin", "access_token": "...",
                                           "refresh_token": "...", "expires_at": 1795741851.0}}}

Credentials are kept per server URL, as ``docker login`` does. The environment wins over the
file: ``LLMREG_URL`` picks the server, ``LLMREG_API_KEY`` (with ``LLMREG_SIGNING_SECRET`` for a
signing key) or ``LLMREG_TOKEN`` (an access token, never refreshed) replace what is stored.

Refresh tokens are single use: two processes refreshing with the same one would end the whole
login. Every change of stored tokens therefore happens under an exclusive lock on
``config.lock``, after re-reading the file (see ``Client`` in ``llmreg.client``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://localhost:8080"
CONFIG_FILE = "config.json"


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("LLMREG_CONFIG_DIR"):
        return Path(env["LLMREG_CONFIG_DIR"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "llmreg"


def normalize_url(url: str) -> str:
    """``localhost:8080/`` -> ``http://localhost:8080``: one key per server in the file."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


@dataclass
class Credentials:
    """What authenticates requests to one server: a login's token pair, or an API key."""

    username: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None
    api_key: str | None = None
    signing_secret: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Credentials:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class ConfigStore:
    """The config file: read, change under a lock, written atomically with mode 0600."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else config_dir()
        self.path = self.directory / CONFIG_FILE

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ValueError(f"{self.path} is not valid JSON: {exc}") from None
        return data if isinstance(data, dict) else {}

    def current_url(self) -> str | None:
        current = self.read().get("current")
        return str(current) if current else None

    def credentials(self, url: str) -> Credentials | None:
        entry = self.read().get("servers", {}).get(normalize_url(url))
        return Credentials.from_dict(entry) if isinstance(entry, dict) else None

    def save(self, url: str, credentials: Credentials | None, *, make_current: bool = True) -> None:
        """Store (or with ``None`` forget) the credentials of ``url``; callers changing tokens
        hold ``lock()``."""
        url = normalize_url(url)
        data = self.read()
        servers = data.setdefault("servers", {})
        if credentials is None:
            servers.pop(url, None)
        else:
            servers[url] = credentials.to_dict()
        if make_current:
            data["current"] = url
        self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".config.", suffix=".tmp")
        try:
            # mkstemp creates the file 0600 already; say so for readers of this code.
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock between processes sharing this config (POSIX ``flock``; a no-op
        where there is none)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / "config.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


@dataclass
class Settings:
    """The URL and credentials a client uses, after the environment had its say."""

    url: str
    credentials: Credentials
    # Where refreshed tokens go; None when the credentials came from the environment.
    store: ConfigStore | None


def resolve_settings(
    url: str | None = None,
    *,
    store: ConfigStore | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """URL: ``url`` > ``LLMREG_URL`` > the file's current server > ``DEFAULT_URL``.
    Credentials: ``LLMREG_API_KEY`` > ``LLMREG_TOKEN`` > the file's entry for that URL."""
    env = os.environ if environ is None else environ
    store = store if store is not None else ConfigStore(config_dir(env))
    chosen = url or env.get("LLMREG_URL") or store.current_url() or DEFAULT_URL
    chosen = normalize_url(chosen)
    if env.get("LLMREG_API_KEY"):
        creds = Credentials(
            api_key=env["LLMREG_API_KEY"], signing_secret=env.get("LLMREG_SIGNING_SECRET") or None
        )
        return Settings(chosen, creds, None)
    if env.get("LLMREG_TOKEN"):
        return Settings(chosen, Credentials(access_token=env["LLMREG_TOKEN"]), None)
    return Settings(chosen, store.credentials(chosen) or Credentials(), store)
