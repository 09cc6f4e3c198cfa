"""Serves the local store's signed object URLs (embedded default only)."""

from __future__ import annotations

from flask import Blueprint, Response, abort

from accident_service.storage.local import InvalidObjectUrl, LocalObjectStore
from accident_service.web import current_runtime

bp = Blueprint("local_objects", __name__)


@bp.get("/storage/o/<token>")
def read_object(token: str):
    store = current_runtime().store
    if not isinstance(store, LocalObjectStore):
        abort(404)
    try:
        key = store.resolve_url_token(token)
        obj = store.get(key)
    except InvalidObjectUrl:
        abort(403)
    except FileNotFoundError:
        abort(404)
    response = Response(obj.data, mimetype=obj.content_type)
    response.headers["Cache-Control"] = "private, max-age=60"
    return response
