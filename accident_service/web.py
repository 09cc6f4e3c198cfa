"""Small helpers views share."""

from __future__ import annotations

from flask import current_app

from accident_service.runtime import Runtime

EXTENSION_KEY = "accident_service"


def current_runtime() -> Runtime:
    return current_app.extensions[EXTENSION_KEY]
