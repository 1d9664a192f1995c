"""``flask --app wsgi events relay`` (the same relay as ``llm-registry relay``)."""

from __future__ import annotations

from flask import current_app
from flask.cli import AppGroup

events_cli = AppGroup("events", help="The event outbox and its relay.")


@events_cli.command("relay")
def relay_command() -> None:
    """Publish the outbox's events to NATS JetStream, in order, until stopped (needs NATS_URL)."""
    from app.events.relay import run_relay

    run_relay(current_app.extensions["registry_settings"])
