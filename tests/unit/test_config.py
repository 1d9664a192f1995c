"""Settings: defaults < TOML file < environment < overrides, and the derived defaults of
CONTRACT.md §8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config import ConfigError, load_settings

SECRET = "s" * 40


def _load(tmp_path: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    environ = {"JWT_SECRET": SECRET, **(env or {})}
    overrides = {"var_dir": str(tmp_path / "var"), **kwargs.pop("overrides", {})}
    return load_settings(environ=environ, overrides=overrides, **kwargs)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = _load(tmp_path)

    assert settings.registry_env == "production"
    assert settings.server_host == "0.0.0.0"
    assert settings.server_port == 8080
    assert settings.jwt_issuer == "llm-registry"
    assert settings.jwt_audience == "llm-registry-api"
    assert settings.jwt_expiration_seconds == 3600
    assert settings.rate_limit_enabled is True
    assert settings.rate_limit_max_requests == 100
    assert settings.rate_limit_window_secs == 60
    assert settings.trusted_proxies == 0
    assert settings.require_request_signing is False
    assert settings.redis_url is None
    assert settings.celery_broker_url is None
    assert settings.nats_url is None
    assert settings.cors_allowed_origins == ()
    assert settings.log_level == "INFO"


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'server_port = 9000\njwt_issuer = "from-file"\njwt_audience = "file-aud"\n'
        "rate_limit_max_requests = 7\n",
    )
    env = {"SERVER_PORT": "9100", "JWT_AUDIENCE": "env-aud"}

    settings = _load(tmp_path, env, config_file=path, overrides={"server_port": 9200})

    assert settings.rate_limit_max_requests == 7  # file over default
    assert settings.jwt_issuer == "from-file"  # file over default
    assert settings.jwt_audience == "env-aud"  # environment over file
    assert settings.server_port == 9200  # override over environment
    assert settings.rate_limit_window_secs == 60  # default where nobody says otherwise


def test_the_file_can_come_from_registry_config(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'jwt_issuer = "via-env-var"\n')

    settings = _load(tmp_path, {"REGISTRY_CONFIG": str(path)})

    assert settings.jwt_issuer == "via-env-var"


def test_an_explicit_file_wins_over_registry_config(tmp_path: Path) -> None:
    ignored = tmp_path / "ignored.toml"
    ignored.write_text('jwt_issuer = "ignored"\n')
    path = _toml(tmp_path, 'jwt_issuer = "explicit"\n')

    settings = _load(tmp_path, {"REGISTRY_CONFIG": str(ignored)}, config_file=path)

    assert settings.jwt_issuer == "explicit"


def test_none_overrides_do_not_mask_lower_layers(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"SERVER_PORT": "9100"}, overrides={"server_port": None})

    assert settings.server_port == 9100


def test_lists_are_comma_separated_in_env_and_arrays_in_toml(tmp_path: Path) -> None:
    env = {"CORS_ALLOWED_ORIGINS": " https://a.example , https://b.example,,"}
    path = _toml(tmp_path, 'test_http_allowed_hosts = ["one.example", "two.example"]\n')

    settings = _load(tmp_path, env, config_file=path)

    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")
    assert settings.test_http_allowed_hosts == ("one.example", "two.example")


def test_toml_lists_may_also_be_comma_separated_strings(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'cors_allowed_origins = "https://a.example,https://b.example"\n')

    settings = _load(tmp_path, config_file=path)

    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        (" off ", False),
    ],
)
def test_booleans(tmp_path: Path, value: str, expected: bool) -> None:
    assert _load(tmp_path, {"RATE_LIMIT_ENABLED": value}).rate_limit_enabled is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT_ENABLED", "maybe"),
        ("REQUIRE_REQUEST_SIGNING", "2"),
        ("SERVER_PORT", "http"),
        ("SERVER_PORT", "80.5"),
        ("SERVER_PORT", "70000"),
        ("SERVER_PORT", "0"),
        ("RATE_LIMIT_MAX_REQUESTS", "-1"),
        ("JWT_EXPIRATION_SECONDS", "0"),
        ("MAX_BLOB_BYTES", "lots"),
        ("TRUSTED_PROXIES", ""),
        ("REGISTRY_ENV", "staging"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_malformed_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        _load(tmp_path, {name: value})


@pytest.mark.parametrize(
    "text",
    [
        "server_port = true\n",
        'server_port = "x"\n',
        "rate_limit_enabled = 3\n",
        "jwt_issuer = [1]\n",
    ],
)
def test_malformed_toml_values_name_the_setting(tmp_path: Path, text: str) -> None:
    name = text.split(" ")[0].upper()

    with pytest.raises(ConfigError, match=name):
        _load(tmp_path, config_file=_toml(tmp_path, text))


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'server_port = 9000\njwt_secrte = "typo"\n')

    with pytest.raises(ConfigError, match="jwt_secrte"):
        _load(tmp_path, config_file=path)


def test_upper_case_toml_keys_are_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SERVER_PORT"):
        _load(tmp_path, config_file=_toml(tmp_path, "SERVER_PORT = 9000\n"))


def test_a_missing_or_broken_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _load(tmp_path, config_file=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, config_file=_toml(tmp_path, "server_port = = 1\n"))


def test_unknown_override_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no_such_setting"):
        _load(tmp_path, overrides={"no_such_setting": 1})


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"PATH": "/bin", "VAR_DIR": "/elsewhere", "HOME": "/root"})

    assert settings.var_dir == str((tmp_path / "var").resolve())


# --- JWT secret ------------------------------------------------------------------------------


def test_production_requires_a_jwt_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_settings(environ={}, overrides={"var_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_settings(environ={"JWT_SECRET": "  "}, overrides={"var_dir": str(tmp_path)})
    assert not (tmp_path / "dev-jwt-secret").exists()


def test_production_rejects_a_short_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        _load(tmp_path, {"JWT_SECRET": "x" * 31})
    assert _load(tmp_path, {"JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32


def test_development_generates_and_keeps_a_throwaway_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"REGISTRY_ENV": "development"}
    var = tmp_path / "var"

    first = load_settings(environ=environ, overrides={"var_dir": str(var)})
    second = load_settings(environ=environ, overrides={"var_dir": str(var)})

    assert first.jwt_secret == second.jwt_secret
    assert first.jwt_secret is not None and len(first.jwt_secret) >= 32
    secret_file = var / "dev-jwt-secret"
    assert secret_file.read_text().strip() == first.jwt_secret
    assert secret_file.stat().st_mode & 0o077 == 0  # private to the owner
    assert any("JWT_SECRET" in r.getMessage() for r in caplog.records)
    other = load_settings(environ=environ, overrides={"var_dir": str(tmp_path / "other")})
    assert other.jwt_secret != first.jwt_secret


def test_a_given_secret_is_used_in_development_too(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"REGISTRY_ENV": "development", "JWT_SECRET": SECRET})

    assert settings.jwt_secret == SECRET
    assert not (tmp_path / "var" / "dev-jwt-secret").exists()


def test_secrets_are_masked_in_the_public_view(tmp_path: Path) -> None:
    env = {
        "REGISTRY_ADMIN_PASSWORD": "admin-pass",
        "DATABASE_URL": "postgresql://app:db-pass@db.example/registry",
        "REDIS_URL": "redis://:redis-pass@cache.example:6379/0",
    }

    public = str(_load(tmp_path, env).as_public_dict())

    for secret in (SECRET, "admin-pass", "db-pass", "redis-pass"):
        assert secret not in public
    assert "db.example" in public


# --- derived defaults ------------------------------------------------------------------------


def test_server_host_depends_on_the_environment(tmp_path: Path) -> None:
    assert _load(tmp_path, {"REGISTRY_ENV": "development"}).server_host == "127.0.0.1"
    assert _load(tmp_path, {"REGISTRY_ENV": "production"}).server_host == "0.0.0.0"
    assert _load(tmp_path, {"SERVER_HOST": "10.0.0.5"}).server_host == "10.0.0.5"


def test_database_defaults_to_sqlite_under_var(tmp_path: Path) -> None:
    settings = _load(tmp_path)

    expected = (tmp_path / "var" / "registry.db").resolve()
    assert settings.database_url == f"sqlite:///{expected}"
    assert settings.blob_store_url == f"file://{(tmp_path / 'var' / 'blobs').resolve()}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_url_is_normalized(tmp_path: Path, given: str, expected: str) -> None:
    assert _load(tmp_path, {"DATABASE_URL": given}).database_url == expected


def test_broker_defaults_to_redis(tmp_path: Path) -> None:
    redis = "redis://127.0.0.1:6379/0"

    assert _load(tmp_path, {"REDIS_URL": redis}).celery_broker_url == redis
    own = _load(tmp_path, {"REDIS_URL": redis, "CELERY_BROKER_URL": "redis://broker:6379/1"})
    assert own.celery_broker_url == "redis://broker:6379/1"
    assert own.redis_url == redis


def test_empty_urls_mean_not_configured(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"REDIS_URL": "", "NATS_URL": " "})

    assert settings.redis_url is None
    assert settings.nats_url is None
    assert settings.celery_broker_url is None


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert _load(tmp_path, {"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_var_dir_from_the_file_is_made_absolute(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    path = _toml(tmp_path, 'var_dir = "state"\n')

    settings = load_settings(path, environ={"JWT_SECRET": SECRET})

    assert settings.var_dir == str(tmp_path / "state")
    assert settings.database_url == f"sqlite:///{tmp_path / 'state' / 'registry.db'}"
