"""Small helpers views share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:  # the runtime is built by the app factory; views only fetch it
    from accident_service.runtime import Runtime

EXTENSION_KEY = "accident_service"


def current_runtime() -> Runtime:
    return current_app.extensions[EXTENSION_KEY]
