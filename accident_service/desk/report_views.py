"""Supervisors' pages: the day summary per station and the CSV export. Officers get 404 (as for any
page that is not theirs)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date

from flask import Response, render_template, request

from accident_service.desk import queries
from accident_service.desk.auth import current_staff
from accident_service.desk.blueprint import bp
from accident_service.desk.reports import MAX_EXPORT_DAYS, ExportRangeInvalid, day_summary, export_rows
from accident_service.errors import NotFound, ServiceError
from accident_service.web import current_runtime


class InvalidExportRange(ServiceError):
    code = "export_range"
    http_status = 400


def _supervisors_only() -> None:
    staff = current_staff()
    if staff is None or staff.station_scope is not None:
        raise NotFound("supervisors only")


def _day(name: str, default: date) -> date:
    try:
        return date.fromisoformat(request.args.get(name, ""))
    except ValueError:
        return default


@bp.get("/summary")
def summary():
    _supervisors_only()
    runtime = current_runtime()
    today = queries.local_today(runtime.clock.now(), queries.DEFAULT_TIMEZONE)
    day = _day("date", today)
    with runtime.unit_of_work() as db:
        stations = day_summary(db, day)
    return render_template("summary.html", day=day, stations=stations, max_days=MAX_EXPORT_DAYS)


@bp.get("/export.csv")
def export_csv():
    _supervisors_only()
    runtime = current_runtime()
    today = queries.local_today(runtime.clock.now(), queries.DEFAULT_TIMEZONE)
    first, last = _day("from", today), _day("to", today)
    with runtime.unit_of_work() as db:
        try:
            rows = list(export_rows(db, first, last))
        except ExportRangeInvalid as exc:
            raise InvalidExportRange(str(exc)) from exc
    filename = f"desk-{first.isoformat()}-{last.isoformat()}.csv"
    return Response(_csv_lines(rows), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _csv_lines(rows: list[tuple[str, ...]]) -> Iterator[str]:
    yield "\ufeff"  # a byte-order mark: spreadsheet programs then read the UTF-8 (station names) right
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
