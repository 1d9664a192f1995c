"""Celery tasks, one module per domain. Tasks are thin: they take ids and call app services."""
