"""WSGI entry point: ``gunicorn wsgi:app``."""

from accident_service import create_app

app = create_app()
