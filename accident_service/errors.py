"""Typed errors features raise; mapped to HTTP once, in the app factory."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A failure with a stable machine-readable code and an HTTP status.

    Subclass per feature (``SlotTaken``, ``PhotoRejected``): set ``code`` and
    ``http_status`` on the class, pass details as keyword arguments.
    """

    code = "error"
    http_status = 400

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON body every error has: ``{code, message, details}`` (details ``{}`` when there are none)."""
        return {"code": self.code, "message": self.message, "details": self.details}

    def response_headers(self) -> dict[str, str]:
        """Headers the HTTP answer needs besides the body (a 401's ``WWW-Authenticate``)."""
        return {}


class NotFound(ServiceError):
    code = "not_found"
    http_status = 404


class CaseNotFound(NotFound):
    """No case by that number that the caller may see: another station's reads as none (its existence is not told)."""

    def __init__(self, case_no: str) -> None:
        super().__init__(f"There is no case {case_no} that you may see: check the number.", case_no=case_no)


class Conflict(ServiceError):
    code = "conflict"
    http_status = 409
