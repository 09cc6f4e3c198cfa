"""Operator endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from accident_service import metrics as service_metrics
from accident_service.runtime import Runtime
from accident_service.web import current_runtime

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    failures = readiness_failures(current_runtime())
    if failures:
        return jsonify(status="unavailable", failing=failures), 503
    return jsonify(status="ok")


@bp.get("/metrics")
def metrics():
    runtime = current_runtime()
    return Response(service_metrics.exposition(runtime.session_factory, runtime.clock), mimetype=CONTENT_TYPE_LATEST)


def readiness_failures(runtime: Runtime) -> dict[str, str]:
    """Name each dependency that is not reachable, with a short reason."""
    failures: dict[str, str] = {}
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        log.warning("readiness: database unreachable: %s", type(exc).__name__)
        failures["database"] = type(exc).__name__
    try:
        runtime.store.check()
    except Exception as exc:
        log.warning("readiness: storage unreachable: %s", type(exc).__name__)
        failures["storage"] = str(exc)[:200]
    return failures
