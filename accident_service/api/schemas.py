"""What the API reads and writes, as marshmallow schemas: they parse requests and describe the OpenAPI document.

Inputs are bounded as the document says (ids fit a 32-bit column), so
anything outside gets a 422 rather than a database error. Every field of an
answer is always present (``null`` where there is no value), and the
document says so.
"""

from __future__ import annotations

from datetime import UTC, datetime

from marshmallow import Schema, fields, validate

from accident_service.cases.lifecycle import LIABILITIES, NOTE_MAX_CHARS, REASON_MAX_CHARS, RETAKE_MAX_DEADLINE_MINUTES
from accident_service.models import AppointmentStatus, CaseStatus, PhotoStatus

MAX_ID = 2**31 - 1
# No text holds a NUL: PostgreSQL text refuses it (with an error, not a 4xx), and no person types one.
NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")
NOT_BLANK = validate.Regexp(r"^[^\x00]*[^\x00\s][^\x00]*$", error="must not be blank (or contain NUL)")


def _text(shortest: int, longest: int, *, blank: bool = True, **kwargs) -> fields.String:
    return fields.String(validate=[validate.Length(shortest, longest), NO_NUL if blank else NOT_BLANK], **kwargs)


def _id(**kwargs) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(1, MAX_ID), **kwargs)


class Moment(fields.AwareDateTime):
    """An RFC 3339 date-time, handed on in UTC.

    Every such value is valid, but one within hours of year 1 or year 9999
    has no UTC equivalent a datetime can hold: it becomes the first or last
    representable moment, which no case comes near either way.
    """

    def _deserialize(self, value, attr, data, **kwargs) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def _moment(**kwargs) -> Moment:
    return Moment(**kwargs)


def _day(**kwargs) -> fields.Date:
    return fields.Date(**kwargs)


def _values(enum) -> validate.OneOf:
    return validate.OneOf([member.value for member in enum])


# -- errors ----------------------------------------------------------------------


class ErrorSchema(Schema):
    """Every error answer, the framework's own (404, 405, 422) included."""

    code = fields.String(required=True, metadata={"description": "stable machine-readable code, e.g. wrong_state"})
    message = fields.String(required=True, metadata={"description": "what went wrong, for a person"})
    details = fields.Dict(required=True, metadata={"description": "facts about the error ({} when none); "
                                                                  "validation messages under 'errors'"})


# -- requests --------------------------------------------------------------------


class IdempotencyHeader(Schema):
    key = fields.String(required=True, data_key="Idempotency-Key",
                        validate=[validate.Length(1, 200), validate.Regexp(r"^[!-~]+$")],
                        metadata={"description": "a new value per intended action (a UUID): a retry with the same "
                                                 "key and body gets the first answer and changes nothing; the same "
                                                 "key with another request is refused (422). Kept 24 hours."})


class VersionBody(Schema):
    expected_version = _id(metadata={"description": "the case version you acted on: refused (409 stale_case) "
                                                    "when the case changed since"})


class RescheduleBody(VersionBody):
    slot_id = _id(required=True, metadata={"description": "a free slot (GET /api/v1/stations/{code}/slots): an id "
                                                         "that names no slot is refused with 404 slot_not_found, "
                                                         "a slot that is full, started, the case's own or another "
                                                         "station's with 409 slot_unavailable, details.reason "
                                                         "saying which (full, started, current, other_station)"})


class CompleteBody(VersionBody):
    liability = fields.String(required=True, validate=validate.OneOf(LIABILITIES),
                              metadata={"description": "A or B fully liable, shared, or none found"})
    note = _text(0, NOTE_MAX_CHARS, load_default="", metadata={"description": "both drivers read it"})


class CancelBody(VersionBody):
    reason = _text(1, REASON_MAX_CHARS, blank=False, required=True, metadata={"description": "both drivers read it"})


class RetakeBody(VersionBody):
    item = fields.Integer(strict=True, required=True, validate=validate.Range(1, 99),
                          metadata={"description": "checklist item (1-based); the party who photographs it is asked"})
    reason = _text(1, REASON_MAX_CHARS, blank=False, required=True, metadata={"description": "the party reads it"})
    deadline_minutes = fields.Integer(strict=True, validate=validate.Range(1, RETAKE_MAX_DEADLINE_MINUTES),
                                      metadata={"description": "minutes the party has (default "
                                                               "RETAKE_DEADLINE_MINUTES)"})


class CaseListArgs(Schema):
    station = _text(1, 32, metadata={"description": "station code"})
    date = _day(metadata={"description": "the appointment's day at its station"})
    status = fields.List(fields.String(validate=_values(CaseStatus)), metadata={"description": "any of these"})
    plate = _text(1, 32, metadata={"description": "either party's whole plate, matched exactly: case, spaces, "
                                                  "'·' and '-' do not matter (粤a·12345 finds 粤A12345), but part "
                                                  "of a plate finds nothing (unlike the desk's search box)"})
    updated_since = _moment()
    cursor = _text(1, 500, metadata={"description": "next_cursor of a page"})
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))


class AuditListArgs(Schema):
    case_no = _text(1, 32)
    action = _text(1, 64, metadata={"description": "e.g. case.confirm"})
    since = _moment()
    cursor = _text(1, 500, metadata={"description": "next_cursor of a page"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 500))


class SlotArgs(Schema):
    date = _day(metadata={"description": "first day, at the station (default: its today)"})
    days = fields.Integer(load_default=1, validate=validate.Range(1, 14))


# -- answers ---------------------------------------------------------------------


def always_present(schema: type[Schema]) -> type[Schema]:
    """Document every field of an answer as required: answers carry each field, null where it has no value."""
    for field in schema._declared_fields.values():
        field.required = True
    return schema


def _nullable(field: fields.Field) -> fields.Field:
    field.allow_none = True
    return field


@always_present
class StationRef(Schema):
    code, name, address, timezone = fields.String(), fields.String(), fields.String(), fields.String()


@always_present
class AppointmentOut(Schema):
    id = fields.Integer()
    status = fields.String(validate=_values(AppointmentStatus))
    slot_id = fields.Integer()
    starts_at, ends_at = fields.AwareDateTime(), fields.AwareDateTime()
    station = fields.Nested(StationRef)
    checked_in_at = _nullable(fields.AwareDateTime())
    completed_at = _nullable(fields.AwareDateTime())


@always_present
class PlateOut(Schema):
    role = fields.String(validate=validate.OneOf(["A", "B"]))
    plate = _nullable(fields.String())


@always_present
class CaseSummaryOut(Schema):
    case_no = fields.String()
    status = fields.String(validate=_values(CaseStatus))
    version = fields.Integer(metadata={"description": "send it back as expected_version with an action"})
    created_at, updated_at = fields.AwareDateTime(), fields.AwareDateTime()
    closed_at = _nullable(fields.AwareDateTime())
    station = _nullable(fields.String(metadata={"description": "code of the station it is handled at"}))
    appointment = _nullable(fields.Nested(AppointmentOut))
    plates = fields.List(fields.Nested(PlateOut))


@always_present
class CasePageOut(Schema):
    items = fields.List(fields.Nested(CaseSummaryOut))
    next_cursor = _nullable(fields.String(metadata={"description": "null on the last page"}))


@always_present
class LocationOut(Schema):
    lat, lng = fields.Float(), fields.Float()
    label = _nullable(fields.String())


@always_present
class PartyOut(Schema):
    role = fields.String(validate=validate.OneOf(["A", "B"]))
    plate, phone = _nullable(fields.String()), _nullable(fields.String())
    language = fields.String()
    joined_at = fields.AwareDateTime(metadata={"description": "the reporter (A): when the case was opened; the other "
                                                          "driver (B): when their request to join reached the service"})


@always_present
class PhotoOut(Schema):
    id = fields.Integer()
    item = _nullable(fields.Integer(metadata={"description": "checklist item (1-based)"}))
    kind = _nullable(fields.String())
    status = fields.String(validate=_values(PhotoStatus))
    reject_code = _nullable(fields.String())
    party = _nullable(fields.String(validate=validate.OneOf(["A", "B"])))
    sha256 = _nullable(fields.String(metadata={"description": "hex SHA-256 of the stored bytes"}))
    content_type = _nullable(fields.String())
    width, height, size_bytes = _nullable(fields.Integer()), _nullable(fields.Integer()), _nullable(fields.Integer())
    taken_at = _nullable(fields.AwareDateTime())
    received_at = fields.AwareDateTime()
    url = _nullable(fields.String(metadata={"description": "presigned, short-lived (see url_expires_at)"}))
    thumbnail_url = _nullable(fields.String())
    url_expires_at = _nullable(fields.AwareDateTime())


@always_present
class EvidencePhotoOut(PhotoOut):
    sha256 = fields.String(metadata={"description": "hex SHA-256 of the stored bytes"})


@always_present
class OutcomeOut(Schema):
    liability = fields.String(validate=validate.OneOf(LIABILITIES))
    note, handled_by = _nullable(fields.String()), _nullable(fields.String())
    completed_at = _nullable(fields.AwareDateTime())


@always_present
class AuditEventOut(Schema):
    id = fields.Integer()
    at = fields.AwareDateTime()
    case_no = _nullable(fields.String())
    actor_type = fields.String(metadata={"description": "staff, party or system"})
    actor = _nullable(fields.String())
    action = fields.String()
    before, after = _nullable(fields.Dict()), _nullable(fields.Dict())


@always_present
class AuditPageOut(Schema):
    items = fields.List(fields.Nested(AuditEventOut))
    next_cursor = _nullable(fields.String())


@always_present
class CaseDetailOut(CaseSummaryOut):
    location = _nullable(fields.Nested(LocationOut))
    parties = fields.List(fields.Nested(PartyOut))
    photos = fields.List(fields.Nested(PhotoOut), metadata={"description": "every photo received, any status"})
    fingerprint = _nullable(fields.String(metadata={"description": "evidence fingerprint the drivers were told"}))
    evidence_number = _nullable(fields.String())
    outcome = _nullable(fields.Nested(OutcomeOut))
    audit_events = fields.List(fields.Nested(AuditEventOut))


@always_present
class DossierOut(Schema):
    case_no = fields.String()
    status = fields.String(validate=_values(CaseStatus))
    version = fields.Integer()
    generated_at, created_at = fields.AwareDateTime(), fields.AwareDateTime()
    closed_at = _nullable(fields.AwareDateTime())
    location = _nullable(fields.Nested(LocationOut))
    parties = fields.List(fields.Nested(PartyOut))
    photos = fields.List(fields.Nested(EvidencePhotoOut), metadata={"description": "the evidence: accepted photos"})
    superseded_photos = fields.List(fields.Nested(EvidencePhotoOut), metadata={"description": "replaced by retakes"})
    fingerprint = fields.String(metadata={"description": "computed from photos (see fingerprint_method)"})
    fingerprint_method = fields.String()
    notified_fingerprint = _nullable(fields.String(metadata={"description": "what the drivers were told at "
                                                                            "booking (null before)"}))
    evidence_number = _nullable(fields.String())
    appointment = _nullable(fields.Nested(AppointmentOut))
    outcome = _nullable(fields.Nested(OutcomeOut))
    audit_events = fields.List(fields.Nested(AuditEventOut))


@always_present
class StationOut(Schema):
    code, name, address, timezone = fields.String(), fields.String(), fields.String(), fields.String()
    lat, lng = fields.Float(), fields.Float()
    desks, slot_minutes = fields.Integer(), fields.Integer()
    active = fields.Boolean()


@always_present
class SlotOut(Schema):
    id = fields.Integer()
    starts_at, ends_at = fields.AwareDateTime(), fields.AwareDateTime()
    capacity, booked, free = fields.Integer(), fields.Integer(), fields.Integer()


@always_present
class StationSlotsOut(Schema):
    station = fields.Nested(StationRef)
    slots = fields.List(fields.Nested(SlotOut))


@always_present
class CallerOut(Schema):
    kind = fields.String(validate=validate.OneOf(["token", "staff"]))
    name = fields.String()
    station = _nullable(fields.String(metadata={"description": "the one station seen; null: every station"}))
    can_write = fields.Boolean()
    csrf_token = _nullable(fields.String(metadata={"description": "staff sessions: send it as X-CSRFToken "
                                                                  "with every POST"}))
