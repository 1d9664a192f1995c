"""Settings of the registry (defaults, TOML, environment, flags) and of its Celery workers."""

from config.settings import ENV_NAMES, ConfigError, Settings, load_settings

__all__ = ["ENV_NAMES", "ConfigError", "Settings", "load_settings"]
