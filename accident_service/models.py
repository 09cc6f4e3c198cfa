"""The tables (DESIGN.md §4). Alembic migrations own the schema; keep them in step.

All timestamps are aware UTC (:class:`accident_service.db.UTCDateTime`).
Enumerations are stored by value as short strings so the schema stays
portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from accident_service.clock import HOME_TIMEZONE
from accident_service.db import Base


def _enum(cls: type[enum.Enum], length: int = 24) -> Enum:
    return Enum(cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e],
                validate_strings=True, create_constraint=False)


class CaseStatus(enum.StrEnum):
    DRAFT = "draft"
    READY = "ready"
    BOOKED = "booked"
    CONFIRMED = "confirmed"
    CHECKED_IN = "checked_in"
    COMPLETED = "completed"
    RETAKE_REQUESTED = "retake_requested"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    NO_SHOW = "no_show"


OPEN_CASE_STATUSES = (CaseStatus.DRAFT, CaseStatus.READY, CaseStatus.BOOKED, CaseStatus.CONFIRMED,
                      CaseStatus.CHECKED_IN, CaseStatus.RETAKE_REQUESTED)


class PartyRole(enum.StrEnum):
    A = "A"  # the reporter
    B = "B"  # the other party


class PhotoStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # replaced by a retake; kept for the audit trail


class AppointmentStatus(enum.StrEnum):
    BOOKED = "booked"
    CONFIRMED = "confirmed"
    CHECKED_IN = "checked_in"
    COMPLETED = "completed"
    NO_SHOW = "no_show"
    CANCELLED = "cancelled"
    RESCHEDULED = "rescheduled"  # moved to another slot; the new row is the active one


ACTIVE_APPOINTMENT_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED, AppointmentStatus.CHECKED_IN)


class WorkStatus(enum.StrEnum):
    """Lifecycle of a leased work item (inbound message, notification)."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"  # gave up after the attempt limit or a permanent error
    DROPPED = "dropped"  # no longer true before it went out (a reminder for a moved appointment)
    HELD = "held"  # waiting for the person: no channel can carry it now; goes out with their next interaction


class StaffRole(enum.StrEnum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"


class TokenScope(enum.StrEnum):
    READ = "read"
    WRITE = "write"


class Station(Base):
    __tablename__ = "station"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(400))
    lat: Mapped[float] = mapped_column(Float)
    lng: Mapped[float] = mapped_column(Float)
    timezone: Mapped[str] = mapped_column(String(64), default=HOME_TIMEZONE)
    opening_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    holidays: Mapped[list[str]] = mapped_column(JSON, default=list)
    closures: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    slot_minutes: Mapped[int] = mapped_column(Integer, default=30)
    desks: Mapped[int] = mapped_column(Integer, default=1)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    slots: Mapped[list[Slot]] = relationship(back_populates="station")


class Slot(Base):
    __tablename__ = "slot"
    __table_args__ = (
        UniqueConstraint("station_id", "starts_at"),
        CheckConstraint("booked >= 0 AND booked <= capacity", name="booked_within_capacity"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("station.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(index=True)
    ends_at: Mapped[datetime]
    capacity: Mapped[int] = mapped_column(Integer)
    booked: Mapped[int] = mapped_column(Integer, default=0)

    station: Mapped[Station] = relationship(back_populates="slots")


class Case(Base):
    __tablename__ = "accident_case"  # "case" is an SQL keyword
    __table_args__ = (
        # The nightly purge looks for closed cases not purged yet: a small index once most are.
        Index("ix_accident_case_unpurged", "id", postgresql_where=text("purged_at IS NULL"),
              sqlite_where=text("purged_at IS NULL")),
        # The API's case list pages by (updated_at, id): integrators poll it for what changed.
        Index("ix_accident_case_updated", "updated_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_no: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[CaseStatus] = mapped_column(_enum(CaseStatus), default=CaseStatus.DRAFT, index=True)
    join_code: Mapped[str | None] = mapped_column(String(6), unique=True)
    join_qr_ticket: Mapped[str | None] = mapped_column(String(256))
    join_qr_url: Mapped[str | None] = mapped_column(String(512))
    location_lat: Mapped[float | None] = mapped_column(Float)
    location_lng: Mapped[float | None] = mapped_column(Float)
    location_label: Mapped[str | None] = mapped_column(String(400))
    evidence_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # Every change made through the lifecycle bumps it: a desk action sent against an older
    # version is refused instead of applied to a case that changed meanwhile.
    version: Mapped[int] = mapped_column(Integer, default=1)
    # The desk's outcome when it completes the case: liability A, B, shared or none, and a note.
    liability: Mapped[str | None] = mapped_column(String(8))
    outcome_note: Mapped[str | None] = mapped_column(Text)
    handled_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_activity_at: Mapped[datetime]
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    closed_at: Mapped[datetime | None]
    # When retention purged its personal data and photos (accident_service/retention.py).
    purged_at: Mapped[datetime | None]

    parties: Mapped[list[Party]] = relationship(back_populates="case", order_by="Party.role")
    photos: Mapped[list[Photo]] = relationship(back_populates="case", order_by="Photo.id")
    appointments: Mapped[list[Appointment]] = relationship(back_populates="case", order_by="Appointment.id")

    def party(self, role: PartyRole) -> Party | None:
        return next((p for p in self.parties if p.role == role), None)


class Party(Base):
    __tablename__ = "party"
    __table_args__ = (
        UniqueConstraint("case_id", "role"),
        # A WeChat user is party to at most one open case, enforced by the database.
        Index("uq_party_open_openid", "openid", unique=True,
              postgresql_where=text("case_open"), sqlite_where=text("case_open")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("accident_case.id", ondelete="CASCADE"))
    role: Mapped[PartyRole] = mapped_column(_enum(PartyRole, 1))
    openid: Mapped[str] = mapped_column(String(64), index=True)
    plate: Mapped[str | None] = mapped_column(String(16))
    phone: Mapped[str | None] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(8), default="zh")
    # False once the case is closed: the driver may then start or join another.
    case_open: Mapped[bool] = mapped_column(Boolean, default=True)
    # Checklist item this party is to replace: asked with ``retake N``, or by the desk (with a deadline).
    retake_item: Mapped[int | None] = mapped_column(Integer)
    retake_due_at: Mapped[datetime | None]
    # Slot ids offered to this party, in the order they were numbered: whoever asks books from their list.
    offered_slot_ids: Mapped[list[int] | None] = mapped_column(JSON)
    offered_at: Mapped[datetime | None]
    # A destructive command waiting for the party's confirmation ("cancel_appointment", "withdraw").
    pending_action: Mapped[str | None] = mapped_column(String(32))
    pending_action_until: Mapped[datetime | None]
    joined_at: Mapped[datetime]

    case: Mapped[Case] = relationship(back_populates="parties")


class Photo(Base):
    __tablename__ = "photo"
    __table_args__ = (Index("ix_photo_case_item", "case_id", "item"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("accident_case.id", ondelete="CASCADE"))
    party_id: Mapped[int | None] = mapped_column(ForeignKey("party.id", ondelete="SET NULL"))
    item: Mapped[int | None] = mapped_column(Integer)  # 1-based checklist position
    kind: Mapped[str | None] = mapped_column(String(32))  # checklist item code
    status: Mapped[PhotoStatus] = mapped_column(_enum(PhotoStatus))
    reject_code: Mapped[str | None] = mapped_column(String(32))
    media_id: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    phash: Mapped[int | None] = mapped_column(BigInteger)
    object_key: Mapped[str | None] = mapped_column(String(300))
    thumb_key: Mapped[str | None] = mapped_column(String(300))
    content_type: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    taken_at: Mapped[datetime | None]
    capture_time_known: Mapped[bool] = mapped_column(Boolean, default=False)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime]
    # Indexed: deleting an old message (retention) sets its photos' to NULL, which would scan every photo.
    inbound_message_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id", ondelete="SET NULL"),
                                                           index=True)

    case: Mapped[Case] = relationship(back_populates="photos")


class Appointment(Base):
    __tablename__ = "appointment"
    __table_args__ = (
        # At most one active appointment per case, enforced by the database.
        Index("uq_appointment_active_case", "case_id", unique=True,
              postgresql_where=text("status IN ('booked', 'confirmed', 'checked_in')"),
              sqlite_where=text("status IN ('booked', 'confirmed', 'checked_in')")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("accident_case.id", ondelete="CASCADE"), index=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slot.id"), index=True)
    status: Mapped[AppointmentStatus] = mapped_column(_enum(AppointmentStatus), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    reminded_at: Mapped[datetime | None]
    checked_in_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    case: Mapped[Case] = relationship(back_populates="appointments")
    slot: Mapped[Slot] = relationship()


#: The rows a claim may take, in id order: a claim walks these (a partial index) rather than every row the
#: table has kept, done or failed (40 ms a claim among 300,000 such rows on PostgreSQL, 0.8 with it).
UNFINISHED = "status IN ('pending', 'processing')"


class InboundMessage(Base):
    __tablename__ = "inbound_message"
    __table_args__ = (Index("ix_inbound_message_due", "status", "next_attempt_at"),
                      Index("ix_inbound_message_sender", "openid", "status"),
                      Index("ix_inbound_message_unfinished", "id", postgresql_where=text(UNFINISHED),
                            sqlite_where=text(UNFINISHED)))

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    openid: Mapped[str] = mapped_column(String(64))
    msg_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # the (decrypted) XML as received
    received_at: Mapped[datetime]
    status: Mapped[WorkStatus] = mapped_column(_enum(WorkStatus), default=WorkStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    # Set while the message waits out an outage past the attempt limit (a photo while storage
    # is down): the sender's later texts may go ahead of it, and it fails only after this.
    waiting_until: Mapped[datetime | None]


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_due", "status", "next_attempt_at"),
                      Index("ix_notification_recipient", "openid", "status"),
                      Index("ix_notification_unfinished", "id", postgresql_where=text(UNFINISHED),
                            sqlite_where=text(UNFINISHED)))

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("accident_case.id", ondelete="SET NULL"), index=True)
    openid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(40))
    language: Mapped[str] = mapped_column(String(8), default="zh")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[WorkStatus] = mapped_column(_enum(WorkStatus), default=WorkStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    # How it went (or is going) out: "wechat" (customer service), "template" or "sms", and to which
    # address (an openid, a mobile number). Decided when it is sent, not when it is written.
    channel: Mapped[str | None] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(64))
    # Set, and committed, just before the provider is called: a worker that dies during the call leaves it,
    # and the next attempt knows the message may have gone out (see notify.dispatch).
    sending_at: Mapped[datetime | None]
    # When its last try met a transient failure of the provider (busy, quota, network): a row that failed after
    # the sweep read the provider's latest failure is not brought forward (notify.dispatch).
    last_failure_at: Mapped[datetime | None]
    # The message that carried this one to the person (a note folded into their next message).
    carried_by: Mapped[int | None] = mapped_column(Integer)
    # The platform's id for a template it took (its msgid): the template's result event names it, and a
    # template that did not reach the person is sent another way (notify.dispatch.template_result). Looked
    # up with the openid, which ix_notification_recipient covers.
    platform_msgid: Mapped[int | None] = mapped_column(BigInteger)


class ProviderFailure(Base):
    """The latest transient failure (busy, quota, network) of each provider notices go through: what waits out
    a backoff goes at once when that provider has delivered since and been quiet for a while
    (notify.dispatch.bring_forward_after_recovery). One row per provider ("wechat", "sms")."""

    __tablename__ = "provider_failure"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_failure_at: Mapped[datetime]


class WechatAllowance(Base):
    """How many customer-service messages the platform lets us send a person now (WECHAT.md §5).

    Each action of the person grants an allowance (a message: 5 sends in 48 hours; a menu click, a
    follow, a QR scan: 3 in a minute); a new action replaces it, it does not add. Fed by the inbox
    (what the person did, and when) and by each send.
    """

    __tablename__ = "wechat_allowance"

    openid: Mapped[str] = mapped_column(String(64), primary_key=True)
    following: Mapped[bool] = mapped_column(Boolean, default=True)
    granted_by: Mapped[str] = mapped_column(String(16))  # message | click | subscribe | scan
    granted_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    sends_left: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]
    # When the platform last said a template did not reach the person (``failed:user block``: they turned the
    # account's messages off; ``failed:system failed``): no template is tried for them until their next action.
    templates_failed_at: Mapped[datetime | None]


class StaffUser(Base):
    __tablename__ = "staff_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[StaffRole] = mapped_column(_enum(StaffRole))
    station_id: Mapped[int | None] = mapped_column(ForeignKey("station.id", ondelete="SET NULL"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    # Counted up by each sign-out and each new password: a session names the one it was signed in under, and is
    # refused once it is old (the session is a signed cookie, which the server cannot otherwise take back).
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


#: How an audit event names an API token that acted (its actor_type is "staff", as an officer's): this, then the
#: token's name (api.callers; the desk shows it as a token, not an officer).
API_TOKEN_ACTOR_PREFIX = "token:"


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor_type: Mapped[str] = mapped_column(String(16))  # staff | party | system
    actor: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("accident_case.id", ondelete="SET NULL"), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class WechatToken(Base):
    __tablename__ = "wechat_token"

    appid: Mapped[str] = mapped_column(String(64), primary_key=True)
    access_token: Mapped[str | None] = mapped_column(String(512))
    expires_at: Mapped[datetime | None]
    refreshed_at: Mapped[datetime | None]
    refresh_lock_until: Mapped[datetime | None]


class PushSignature(Base):
    """A (timestamp, nonce) a plain-mode push was signed with, and the body it came with.

    The plain signature covers only token, timestamp and nonce: without this
    record anyone who saw one signed push could post other bodies under it
    until the timestamp grows too old.
    """

    __tablename__ = "push_signature"

    timestamp: Mapped[str] = mapped_column(String(20), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(index=True)


class DriverPreference(Base):
    """What a driver chose that outlives their cases: the language of every reply."""

    __tablename__ = "driver_preference"

    openid: Mapped[str] = mapped_column(String(64), primary_key=True)
    language: Mapped[str] = mapped_column(String(8))
    updated_at: Mapped[datetime]


class ApiToken(Base):
    """A credential an integration (the police case system, an insurer) presents on /api/v1.

    Only the SHA-256 of the token is kept: the token is high-entropy random, so
    a fast hash is enough to make a leaked table useless (argon2 is for
    passwords people choose). Names stay unique after revocation, so audit
    events that name a token always mean one.
    """

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(48), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[TokenScope] = mapped_column(_enum(TokenScope, 8))
    # None: every station. A station's token goes with its station.
    station_id: Mapped[int | None] = mapped_column(ForeignKey("station.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # Recorded at most once a minute (a write on every request would serialise readers on SQLite).
    last_used_at: Mapped[datetime | None]


class IdempotencyKey(Base):
    """The first answer to a POST under an ``Idempotency-Key``, replayed to retries of it.

    Written in the transaction of the action it answers (whose case row is
    locked), so a retry either waits for it or finds it; keys are per caller
    (``owner``) and forgotten after ``expires_at``.
    """

    __tablename__ = "idempotency_key"

    owner: Mapped[str] = mapped_column(String(80), primary_key=True)  # "token:<id>" or "staff:<id>"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # method, path and body: a reused key is refused
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
