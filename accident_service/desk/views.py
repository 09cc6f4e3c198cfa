"""The desk's pages: the queue (and the rows it refreshes itself with), the case page and the case sheet."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from flask import Response, make_response, redirect, render_template, request, url_for

from accident_service.booking.stations import active_stations
from accident_service.desk import queries
from accident_service.desk.auth import Staff, current_staff
from accident_service.desk.blueprint import bp
from accident_service.desk.case_file import case_file
from accident_service.desk.evidence import recheck_originals
from accident_service.desk.i18n import current_language
from accident_service.desk.sessions import mark_background_request
from accident_service.web import current_runtime


@dataclass(frozen=True)
class QueueView:
    """What the queue shows: parsed from the query string, scoped to the staff member."""

    day: date
    status: str | None
    text: str
    station_id: int | None  # None: every station (supervisors only)

    def query_args(self) -> dict[str, str]:
        args = {"date": self.day.isoformat(), "status": self.status or "", "q": self.text}
        if self.station_id is not None:
            args["station"] = str(self.station_id)
        return {key: value for key, value in args.items() if value}


def _queue_view(staff: Staff, db) -> QueueView:
    if staff.station_scope is not None:
        station_id = staff.station_scope
    else:
        raw = request.args.get("station", "")
        station_id = int(raw) if raw.isdigit() else None
    zone = queries.station_timezone(db, station_id)
    try:
        day = date.fromisoformat(request.args.get("date", ""))
    except ValueError:
        day = queries.local_today(current_runtime().clock.now(), zone)
    status = request.args.get("status") if request.args.get("status") in queries.BADGES else None
    return QueueView(day, status, request.args.get("q", "").strip()[:64], station_id)


def _queue_context() -> dict:
    """The queue's template context, or {"redirect": url} when the search names one case exactly."""
    runtime, staff = current_runtime(), current_staff()
    now = runtime.clock.now()
    with runtime.unit_of_work() as db:
        view = _queue_view(staff, db)
        if view.text:
            exact = queries.exact_case_no(db, view.text, station_id=staff.station_scope)
            if exact is not None:
                return {"redirect": url_for("desk.case_page", case_no=exact)}
        queue = queries.day_queue(db, day=view.day, station_id=view.station_id, now=now)
        found = queries.search(db, view.text, station_id=view.station_id, around=view.day, now=now) \
            if view.text else None
        stations = active_stations(db)
    groups = queries.group_by_slot(found) if found is not None else queue.groups(view.status)
    return {"view": view, "queue": queue, "groups": groups, "searching": found is not None,
            "stations": stations if staff.station_scope is None else [],
            "station_name": next((s.name for s in stations if s.id == view.station_id), None),
            "badges": queries.BADGES, "search_days": queries.SEARCH_DAYS}


@bp.get("/")
def queue():
    context = _queue_context()
    if "redirect" in context:
        return redirect(context["redirect"])
    return render_template("queue.html", **context)


@bp.get("/queue/rows")
def queue_rows():
    """The counts and rows alone, for the page's script; 304 when they are what the page has.

    The tag is taken from the rows, not the HTML (whose CSRF tokens differ each time), so an
    unchanged queue costs no rendering and the page keeps its DOM as it is.
    """
    mark_background_request()
    context = _queue_context()
    if "redirect" in context:
        return Response(status=204)
    tag = hashlib.sha256(repr((context["queue"].rows, context["groups"], context["view"], current_language(),
                               current_staff().id)).encode()).hexdigest()[:32]
    if request.if_none_match.contains(tag):
        return Response(status=304, headers={"ETag": f'"{tag}"'})
    response = make_response(render_template("_queue_body.html", **context))
    response.set_etag(tag)
    return response


def _case_page(case_no: str, template: str, **extra):
    runtime, staff = current_runtime(), current_staff()
    with runtime.unit_of_work() as db:
        contents = case_file(db, case_no, station_id=staff.station_scope, settings=runtime.settings,
                             store=runtime.store, now=runtime.clock.now())
    return render_template(template, file=contents, case=contents.case, zone=contents.timezone, now=runtime.clock.now(),
                           **extra)


@bp.get("/cases/<case_no>")
def case_page(case_no: str):
    return _case_page(case_no, "case.html")


@bp.get("/cases/<case_no>/verify")
def verify_evidence(case_no: str):
    """The case page with every original re-hashed (reads the objects: on demand only)."""
    runtime, staff = current_runtime(), current_staff()
    with runtime.unit_of_work() as db:
        check = recheck_originals(db, runtime.store, case_no, station_id=staff.station_scope)
    return _case_page(case_no, "case.html", evidence_check=check)


@bp.get("/cases/<case_no>/sheet")
def case_sheet(case_no: str):
    return _case_page(case_no, "sheet.html")
