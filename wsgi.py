"""WSGI entry point: ``gunicorn wsgi:app`` and ``flask --app wsgi ...``."""

from app import create_app, ensure_first_admin

app = create_app()
ensure_first_admin(app)
