"""The /api/v1 endpoints: each parses with a schema, calls one function and returns what it gives.

Reads call ``api/queries.py`` and ``api/listings.py``; actions call
``api/writes.py``, which applies ``desk/actions.py`` once per
Idempotency-Key. Errors are raised, never caught here: the app factory maps
them to ``{code, message, details}`` once.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request
from flask_smorest import Blueprint
from flask_wtf.csrf import generate_csrf
from marshmallow import RAISE, missing
from sqlalchemy.orm import Session
from webargs.flaskparser import FlaskParser, is_json_request

from accident_service.api import listings, queries, writes
from accident_service.api import schemas as s
from accident_service.api.auth import authenticate, current_caller
from accident_service.api.idempotency import request_hash
from accident_service.errors import ServiceError
from accident_service.models import Case, CaseStatus, Station
from accident_service.web import current_runtime


class NotJson(ServiceError):
    """A body sent as something other than JSON. webargs reads such a body as none, so ``curl -d`` or text/plain
    had its ``expected_version`` skipped and a stale action applied (acceptance pass): refused, not ignored."""

    code = "unsupported_media_type"
    http_status = 415


class _Parser(FlaskParser):
    def _raw_load_json(self, req):
        # An empty body is no body (some clients always send Content-Type: application/json), not broken JSON.
        if not req.get_data(cache=True):
            return missing
        if not is_json_request(req):
            raise NotJson(f"Send the body as JSON (Content-Type: application/json), not {req.mimetype or 'untyped'}.",
                          content_type=req.mimetype or None)
        return super()._raw_load_json(req)


class _Blueprint(Blueprint):
    ARGUMENTS_PARSER = _Parser()


blp = _Blueprint("api", __name__, url_prefix="/api/v1",
                 description="Cases, appointment actions, stations and slots, audit events, dossiers")
#: The largest body the API reads (413 beyond it, before a byte more is read): an action's body is a few hundred
#: bytes (a note is at most 500 characters), and a caller's mistake of megabytes must not be read whole and parsed.
MAX_BODY_BYTES = 64 * 1024


@blp.before_request
def _cap_the_body() -> None:
    request.max_content_length = MAX_BODY_BYTES


blp.before_request(authenticate)
# Query parameters are strict like bodies: a misspelt filter (?staus=booked) is a 422, not a silently wider list.
QUERY = {"location": "query", "unknown": RAISE}

ERRORS = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 409: "CONFLICT",
          413: "REQUEST_ENTITY_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 422: "UNPROCESSABLE_ENTITY"}


def errors(*statuses: int):
    """Document the error answers an operation gives (all in the error schema)."""
    def decorate(view):
        for status in statuses:
            view = blp.alt_response(status, response=ERRORS[status])(view)
        return view
    return decorate


def _links(now) -> queries.Links:
    runtime = current_runtime()
    return queries.Links(runtime.store, runtime.settings.PRESIGNED_URL_SECONDS, request.url_root, now)


@blp.route("/me", tags=["access"])
@blp.doc(operationId="whoAmI", summary="Who the API takes you for (and a CSRF token for a desk session)")
@blp.response(200, s.CallerOut)
@errors(401)
def who_am_i():
    caller = current_caller()
    with current_runtime().unit_of_work() as session:
        station = session.get(Station, caller.station_id) if caller.station_id is not None else None
        return {"kind": caller.kind, "name": caller.name, "station": station.code if station else None,
                "can_write": caller.can_write, "csrf_token": generate_csrf() if caller.kind == "staff" else None}


# -- cases ------------------------------------------------------------------------


@blp.route("/cases", tags=["cases"])
@blp.doc(operationId="listCases", summary="Cases, oldest change first; follow next_cursor until it is null")
@blp.arguments(s.CaseListArgs, **QUERY)
@blp.response(200, s.CasePageOut)
@errors(400, 401)
def list_cases(args: dict[str, Any]):
    filters = listings.CaseFilters(station=args.get("station"), day=args.get("date"),
                                   statuses=tuple(CaseStatus(v) for v in args.get("status", ())),
                                   plate=args.get("plate"), updated_since=args.get("updated_since"))
    with current_runtime().unit_of_work() as session:
        return listings.list_cases(session, scope=current_caller().station_id, filters=filters,
                                   cursor=args.get("cursor"), limit=args["limit"])


@blp.route("/cases/<key:case_no>", tags=["cases"])
@blp.doc(operationId="getCase", summary="A case: parties, photos (presigned links, sha256), fingerprint, "
                                        "appointment, outcome, audit events")
@blp.response(200, s.CaseDetailOut)
@errors(401, 404)
def get_case(case_no: str):
    runtime = current_runtime()
    with runtime.unit_of_work() as session:
        case = queries.load_case(session, case_no, scope=current_caller().station_id)
        return queries.detail(session, case, _links(runtime.clock.now()))


@blp.route("/cases/<key:case_no>/dossier", tags=["cases"])
@blp.doc(operationId="getDossier", summary="What an insurer files: every photo's sha256, the fingerprint, "
                                           "parties, appointment, outcome")
@blp.response(200, s.DossierOut)
@errors(401, 404)
def get_dossier(case_no: str):
    runtime = current_runtime()
    with runtime.unit_of_work() as session:
        case = queries.load_case(session, case_no, scope=current_caller().station_id)
        return queries.dossier(session, case, _links(runtime.clock.now()))


@blp.route("/cases/<key:case_no>/audit-events", tags=["audit"])
@blp.doc(operationId="listCaseAuditEvents", summary="A case's audit events, oldest first")
@blp.response(200, s.AuditEventOut(many=True))
@errors(401, 404)
def case_audit_events(case_no: str):
    with current_runtime().unit_of_work() as session:
        return queries.audit_trail(session, queries.load_case(session, case_no, scope=current_caller().station_id))


@blp.route("/audit-events", tags=["audit"])
@blp.doc(operationId="listAuditEvents", summary="Audit events about cases, oldest first")
@blp.arguments(s.AuditListArgs, **QUERY)
@blp.response(200, s.AuditPageOut)
@errors(400, 401)
def audit_events(args: dict[str, Any]):
    with current_runtime().unit_of_work() as session:
        return listings.list_audit_events(session, scope=current_caller().station_id, case_no=args.get("case_no"),
                                          action=args.get("action"), since=args.get("since"),
                                          cursor=args.get("cursor"), limit=args["limit"])


# -- stations -----------------------------------------------------------------------


@blp.route("/stations", tags=["stations"])
@blp.doc(operationId="listStations", summary="Handling desks (a station's token sees its own)")
@blp.response(200, s.StationOut(many=True))
@errors(401)
def stations():
    with current_runtime().unit_of_work() as session:
        return listings.list_stations(session, scope=current_caller().station_id)


@blp.route("/stations/<key:code>/slots", tags=["stations"])
@blp.doc(operationId="listFreeSlots", summary="A station's slots with a free seat, not yet started")
@blp.arguments(s.SlotArgs, **QUERY)
@blp.response(200, s.StationSlotsOut)
@errors(401, 404)
def free_slots(args: dict[str, Any], code: str):
    runtime = current_runtime()
    with runtime.unit_of_work() as session:
        station, slots = listings.free_slots(session, code, scope=current_caller().station_id, day=args.get("date"),
                                             days=args["days"], now=runtime.clock.now())
        return {"station": station, "slots": slots}


# -- actions --------------------------------------------------------------------------


def _act(case_no: str, action: str, header: dict[str, str], body: dict[str, Any]):
    caller = current_caller()
    intent = writes.Request(case_no, action, body, header["key"], request_hash(request.method, request.path, body))
    answer = writes.perform(current_runtime(), caller, intent, _render)
    response = jsonify(answer.body)
    response.status_code = answer.status
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _render(session: Session, case: Case) -> dict[str, Any]:
    return s.CaseSummaryOut().dump(queries.summary(case))


def action(path: str, name: str, body: type, summary: str):
    """Register the POST endpoint of one desk action (all take the key and answer the case as it is after)."""
    def view(header: dict[str, str], params: dict[str, Any], case_no: str):
        return _act(case_no, name, header, params)

    view.__name__ = name
    # 400: a body that is broken JSON, or a desk session's write without its CSRF token; 413: over MAX_BODY_BYTES;
    # 415: a body sent as something other than JSON.
    view = errors(400, 401, 403, 404, 409, 413, 415, 422)(view)
    view = blp.response(200, s.CaseSummaryOut, description="the case after the action (or, for a retry, "
                                                            "the first answer: header Idempotent-Replayed)")(view)
    view = blp.arguments(body, required=body is not s.VersionBody)(view)
    view = blp.arguments(s.IdempotencyHeader, location="headers")(view)
    view = blp.doc(operationId=_camel(name), summary=summary)(view)
    return blp.route(f"/cases/<key:case_no>/{path}", methods=["POST"], endpoint=name, tags=["actions"])(view)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


action("confirm", "confirm", s.VersionBody, "Confirm the booked appointment")
action("reschedule", "reschedule", s.RescheduleBody, "Move the appointment to a free slot")
action("check-in", "check_in", s.VersionBody, "Both drivers are at the desk")
action("complete", "complete", s.CompleteBody, "Close the case with its outcome (liability and a note)")
action("no-show", "no_show", s.VersionBody, "Nobody came (once the slot has started)")
action("cancel", "cancel", s.CancelBody, "Cancel the appointment with a reason; the case stays for rebooking")
action("retake-requests", "request_retake", s.RetakeBody, "Ask the party who photographs an item to send it again")
