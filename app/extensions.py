"""Extension singletons, bound to the app by create_app."""

from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from app.db import Base, RegistrySession
from app.openapi import RegistryApi

# expire_on_commit=False: what a use case returns is the state it committed. Reloading after
# the commit would race with the worker that the commit just woke (a 202 showing "validating").
db = SQLAlchemy(
    metadata=Base.metadata, session_options={"expire_on_commit": False, "class_": RegistrySession}
)
migrate = Migrate()
jwt = JWTManager()


def make_api() -> RegistryApi:
    """flask-smorest's Api binds to a single app (its spec and blueprints), so unlike the
    extensions above it is made per app by create_app; reach it as ``app.extensions["api"]``."""
    return RegistryApi()
