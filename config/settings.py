"""Registry settings: defaults < TOML file < environment < command-line flags (CONTRACT.md §8).

Every setting has one name: the environment variable of the contract. The TOML file uses the same
names in lower case; command-line flags are passed in as ``overrides`` by the CLI. List values are
comma-separated strings in the environment and may be TOML arrays in the file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

log = logging.getLogger(__name__)

ENV_PRODUCTION = "production"
ENV_DEVELOPMENT = "development"
MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The typed settings of one registry process. Field names are the env names in lower case."""

    registry_env: str = ENV_PRODUCTION
    server_host: str | None = None  # derived: 127.0.0.1 in development, 0.0.0.0 otherwise
    server_port: int = 8080
    database_url: str | None = None  # derived: SQLite under ./var
    redis_url: str | None = None
    celery_broker_url: str | None = None  # derived: REDIS_URL, else SQLite through kombu
    nats_url: str | None = None
    blob_store_url: str | None = None  # derived: file://<abs ./var/blobs>
    s3_endpoint_url: str | None = None
    jwt_secret: str | None = None
    jwt_issuer: str = "llm-registry"
    jwt_audience: str = "llm-registry-api"
    jwt_expiration_seconds: int = 3600
    rate_limit_enabled: bool = True
    rate_limit_max_requests: int = 100
    rate_limit_window_secs: int = 60
    trusted_proxies: int = 0
    require_request_signing: bool = False
    log_level: str = "INFO"
    cors_allowed_origins: tuple[str, ...] = ()
    max_blob_bytes: int = 100 * 1024**3
    compliance_scan_interval_seconds: int = 86400
    test_http_allowed_hosts: tuple[str, ...] = ()
    registry_admin_username: str | None = None
    registry_admin_password: str | None = None
    otel_exporter_otlp_endpoint: str | None = None
    # Where ./var lives; not an env var of the contract, settable in the TOML file only.
    var_dir: str = "var"
    # Per-endpoint rate limits, TOML only: a [rate_limits] table of "METHOD /path/{template}" =
    # "N per M seconds" (or "N/minute"), each replacing the global limit on that endpoint.
    rate_limits: tuple[tuple[str, str], ...] = ()

    @property
    def is_development(self) -> bool:
        return self.registry_env == ENV_DEVELOPMENT

    def as_public_dict(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs and diagnostics."""
        masked = {"jwt_secret", "registry_admin_password"}
        out = dataclasses.asdict(self)
        for key in masked:
            if out.get(key):
                out[key] = "***"
        for key in ("database_url", "redis_url", "celery_broker_url", "nats_url"):
            if out.get(key):
                out[key] = _mask_url_password(out[key])
        return out


TOML_ONLY = frozenset({"var_dir", "rate_limits"})
ENV_NAMES: tuple[str, ...] = tuple(
    f.name.upper() for f in dataclasses.fields(Settings) if f.name not in TOML_ONLY
)
_FIELD_TYPES = get_type_hints(Settings)
_FIELD_NAMES = {f.name for f in dataclasses.fields(Settings)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _mask_url_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: mask nothing but the whole userinfo
        _, sep, tail = url.partition("@")
        return f"***@{tail}" if sep else url


def _coerce(name: str, value: Any) -> Any:
    """Turn a raw value (str from the environment, TOML scalar or array) into the field's type."""
    kind = _FIELD_TYPES[name]
    label = name.upper()
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{label} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{label} must be an integer, got {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{label} must be an integer, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{label} must not be negative, got {number}")
        return number
    if kind == tuple[tuple[str, str], ...]:
        return _rate_limits(value)
    if kind == tuple[str, ...]:
        items = value if isinstance(value, list) else str(value).split(",")
        return tuple(str(item).strip() for item in items if str(item).strip())
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{label} must be a single value, got {value!r}")
    text = str(value).strip()
    return text or None


def _rate_limits(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"POST /v1/assets": "20 per minute"}`` -> validated (endpoint, limit) pairs."""
    from limits import parse_many

    if not isinstance(value, dict):
        raise ConfigError("rate_limits must be a table of 'METHOD /path' = 'N per M seconds'")
    pairs = []
    for endpoint, limit in value.items():
        method, _, path = str(endpoint).partition(" ")
        if method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"} or not (
            path.startswith("/v1/")
        ):
            raise ConfigError(f"rate_limits: {endpoint!r} must look like 'POST /v1/assets'")
        try:
            parse_many(str(limit))
        except ValueError:
            raise ConfigError(
                f"rate_limits: {limit!r} for {endpoint!r} is not a limit like '20 per minute'"
            ) from None
        pairs.append((f"{method.upper()} {path}", str(limit)))
    return tuple(sorted(pairs))


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(key for key in data if key not in _FIELD_NAMES)
    if unknown:
        raise ConfigError(f"config file {path} has unknown keys: {', '.join(unknown)}")
    return data


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from the four layers and derive the defaults that depend on others.

    Called once per process by ``create_app`` and the CLI. Raises ``ConfigError`` with a message
    naming the setting when a value is malformed or ``JWT_SECRET`` is missing in production.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = config_file or env.get("REGISTRY_CONFIG")
    if path:
        raw.update(_read_toml(path))
    for name in _FIELD_NAMES:
        if name.upper() in env and name not in TOML_ONLY:
            raw[name] = env[name.upper()]
    for name, value in (overrides or {}).items():
        if name not in _FIELD_NAMES:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            raw[name] = value
    values = {name: _coerce(name, value) for name, value in raw.items()}
    settings = Settings(**values)
    return _derive(settings)


def _derive(settings: Settings) -> Settings:
    if settings.registry_env not in (ENV_PRODUCTION, ENV_DEVELOPMENT):
        raise ConfigError(
            f"REGISTRY_ENV must be {ENV_PRODUCTION!r} or {ENV_DEVELOPMENT!r}, "
            f"got {settings.registry_env!r}"
        )
    if settings.log_level.upper() not in logging.getLevelNamesMapping():
        raise ConfigError(f"LOG_LEVEL must be a logging level name, got {settings.log_level!r}")
    if not 1 <= settings.server_port <= 65535:
        raise ConfigError(f"SERVER_PORT must be 1-65535, got {settings.server_port}")
    if settings.jwt_expiration_seconds < 1:
        raise ConfigError("JWT_EXPIRATION_SECONDS must be at least 1")
    for name in ("rate_limit_max_requests", "rate_limit_window_secs"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.upper()} must be at least 1")
    var_dir = Path(settings.var_dir).resolve()
    changes: dict[str, Any] = {"var_dir": str(var_dir), "log_level": settings.log_level.upper()}
    if settings.server_host is None:
        changes["server_host"] = "127.0.0.1" if settings.is_development else "0.0.0.0"
    if settings.database_url is None:
        changes["database_url"] = f"sqlite:///{var_dir / 'registry.db'}"
    else:
        changes["database_url"] = normalize_database_url(settings.database_url)
    if settings.celery_broker_url is None and settings.redis_url:
        changes["celery_broker_url"] = settings.redis_url
    if settings.blob_store_url is None:
        changes["blob_store_url"] = f"file://{var_dir / 'blobs'}"
    if not settings.jwt_secret:
        if not settings.is_development:
            raise ConfigError(
                "JWT_SECRET is required when REGISTRY_ENV=production: set it to a random string "
                f"of at least {MIN_SECRET_LENGTH} characters"
            )
        changes["jwt_secret"] = _development_secret(var_dir)
    elif len(settings.jwt_secret) < MIN_SECRET_LENGTH and not settings.is_development:
        raise ConfigError(f"JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters long")
    return dataclasses.replace(settings, **changes)


def _development_secret(var_dir: Path) -> str:
    """A throwaway secret kept under ./var so every process of one machine signs alike.

    Created once with O_EXCL so concurrent processes (gunicorn workers, the Celery worker) agree.
    """
    path = var_dir / "dev-jwt-secret"
    log.warning("JWT_SECRET is not set: using the throwaway secret in %s (development only)", path)
    var_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Write a private temp file, then link it into place: the link is atomic, so a
        # concurrent process either wins or reads the winner's complete file.
        tmp = var_dir / f".dev-jwt-secret.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{path} is damaged: delete it or set JWT_SECRET")
    return secret


def normalize_database_url(url: str) -> str:
    """Accept the plain ``postgresql://`` form and use the psycopg 3 driver for it."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
