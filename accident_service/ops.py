"""Operator endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy import text

from accident_service import metrics as service_metrics
from accident_service.db import error_name
from accident_service.runtime import Runtime
from accident_service.web import bearer_token, current_runtime

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
    if not _may_scrape(runtime.settings.METRICS_TOKEN):
        return Response("a bearer token is required (METRICS_TOKEN)", status=401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    # The text format generate_latest writes, named as prometheus_client's own server names it (the scheduler's
    # /metrics). As a content type, whole: given as a mimetype, Flask added a second charset, and Prometheus 3 refuses
    # a media type with a parameter twice (Go's mime.ParseMediaType), failing every scrape (acceptance pass).
    return Response(service_metrics.exposition(runtime.session_factory, runtime.clock),
                    content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _may_scrape(token: str) -> bool:
    """No token set (the embedded default), or the request's bearer token is it (compared in constant time)."""
    if not token:
        return True
    given = bearer_token(request.headers.get("Authorization", ""))
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def readiness_failures(runtime: Runtime) -> dict[str, str]:
    """Name each dependency that is not reachable, with the type of its error; the reason itself goes to the log
    only: /readyz is public (port 8000 serves the webhook), and a store's error names its endpoint and bucket
    (operator acceptance pass)."""
    failures: dict[str, str] = {}
    try:
        # One statement, so on the autocommit engine: a server that takes it and never answers fails it in seconds.
        runtime.single_statement(lambda connection: connection.execute(text("SELECT 1")))
    except Exception as exc:  # any driver error means "not ready"
        log.warning("readiness: database unreachable: %s", error_name(exc))
        failures["database"] = error_name(exc)
    try:
        runtime.store.check()
    except Exception as exc:
        log.warning("readiness: storage unreachable: %s", str(exc)[:200] or type(exc).__name__)
        failures["storage"] = type(exc).__name__
    return failures
