"""JSON API v1 for integrators (the police case-management system, insurers) and desk sessions.

flask-smorest builds the OpenAPI 3 description at ``/api/v1/openapi.json``
from the marshmallow schemas in ``api/schemas.py``; ``api/views.py`` holds
the endpoints. Errors are not handled here: the app factory maps every one
under /api/ to ``{code, message, details}`` once.
"""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api
from werkzeug.routing import BaseConverter

from accident_service.api.schemas import ErrorSchema

PREFIX = "/api/v1"
DESCRIPTION = """\
Authenticate with `Authorization: Bearer <token>` (made by `accident-service create-api-token`); a read token
may not POST (403), and a station's token sees only that station's cases (404 otherwise). A signed-in desk
session works too; its POSTs carry `X-CSRFToken` (from `GET /api/v1/me`).

Every POST takes an `Idempotency-Key` header: a retry with the same key and body gets the first answer (status
and body, with `Idempotent-Replayed: true`) and changes nothing; the same key with another request is refused
with 422 `idempotency_key_reused`. Keys are kept 24 hours (IDEMPOTENCY_KEY_HOURS).

Actions take an optional `expected_version` (the case's `version` you acted on): a case that changed since is
refused with 409 `stale_case`. Every error is `{code, message, details}`: act on `code` and, for a refused
action, `details.reason`; `message` is an English sentence for a person, whose wording may change.
"""


class KeyConverter(BaseConverter):
    """A case number or station code in a path: upper-case letters, digits and '-'.

    Anything else cannot name one, so it is a 404 before any query (a free
    segment could carry a NUL, which PostgreSQL text refuses with an error).
    """

    regex = "[0-9A-Z-]{1,32}"


class _Api(Api):
    """flask-smorest's Api, documenting our error schema and leaving error handling to the app factory."""

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """Nothing: errors are mapped once, in ``accident_service.create_app``."""


def init_app(app: Flask) -> Api:
    """Register the API blueprint and its OpenAPI description; called once by the app factory."""
    from accident_service.api.views import blp
    from accident_service.desk.auth import csrf

    app.config.update(API_TITLE="Accident self-report service API", API_VERSION="1", OPENAPI_VERSION="3.0.3",
                      OPENAPI_URL_PREFIX=PREFIX, OPENAPI_JSON_PATH="openapi.json",
                      API_SPEC_OPTIONS={"info": {"description": DESCRIPTION},
                                        "security": [{"bearerAuth": []}]})
    app.url_map.converters["key"] = KeyConverter
    api = _Api(app)
    api.register_converter(KeyConverter, lambda _: {"type": "string", "pattern": f"^{KeyConverter.regex}$"})
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer",
                                                       "description": "an API token"})
    api.register_blueprint(blp)
    # Token requests need no CSRF token and session writes are checked in api/auth.py (see there why).
    csrf.exempt(blp)
    return api
