"""Photo intake: check and store the bytes a driver sent (network work), then record them (one transaction).

``prepare_photo`` runs outside any database transaction, on bytes the caller
downloaded (``wechat.processing``): it inspects them at reduced scale and
stores the original, byte for byte, content-addressed
(``cases/<yyyy>/<mm>/<case_no>/<sha256>.<ext>``, with its content type and
``sha256``/``case_no`` metadata) and a 320-px upright thumbnail beside it.
A retry stores identical bytes under the same key, so it is harmless; storage
being down is raised for the inbox to retry with backoff. ``record_photo``
then files it under one of the sender's own checklist items (items are
assigned by role, so photos the two drivers send at the same moment never
take each other's place), decides against the case's other photos
(duplicates, retakes) and writes the Photo row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service import metrics
from accident_service.cases import lifecycle
from accident_service.cases.facts import Visit
from accident_service.cases.lifecycle import Actor
from accident_service.cases.service import accepted_photos, evidence_fingerprint, item_code, items_of, touch
from accident_service.models import Case, Party, Photo, PhotoStatus
from accident_service.photos.checks import ExistingPhoto, ImageRejected, PhotoPolicy, Verdict, evaluate
from accident_service.photos.inspect import ImageFacts, inspect_image_with_preview
from accident_service.photos.thumbnails import THUMBNAIL_CONTENT_TYPE, make_thumbnail
from accident_service.runtime import Runtime
from accident_service.settings import Settings

_INT64 = 1 << 64


@dataclass(frozen=True)
class PhotoForClosedCase:
    """A photo sent for a case that has closed since (cases.lifecycle.closed_after): it goes to no case."""

    case_no: str


@dataclass(frozen=True)
class PreparedPhoto:
    media_id: str
    received_at: datetime
    sha256: str
    size_bytes: int
    object_key: str | None
    thumb_key: str | None = None
    facts: ImageFacts | None = None
    rejection: Verdict | None = None  # decided before any case context (not an image, too big…)
    case_no: str | None = None  # the case it was prepared for


@dataclass(frozen=True)
class PhotoOutcome:
    accepted: bool
    item: int | None
    code: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    received: int = 0
    required: int = 0
    replaced: bool = False
    extra: bool = False
    photo_id: int | None = None
    retakes_done: bool = False  # this photo answered the last photo the desk asked for


def policy_from(settings: Settings) -> PhotoPolicy:
    return PhotoPolicy(min_short_side=settings.PHOTO_MIN_SHORT_SIDE, max_pixels=settings.PHOTO_MAX_PIXELS,
                       max_capture_age=timedelta(minutes=settings.PHOTO_MAX_CAPTURE_AGE_MINUTES))


#: Where every object a photo stores goes (its original, its thumbnail, or an upload that could not be used).
EVIDENCE_PREFIX = "cases/"


def evidence_key(case_no: str, received_at: datetime, sha256: str, extension: str) -> str:
    return f"{EVIDENCE_PREFIX}{received_at:%Y}/{received_at:%m}/{case_no}/{sha256}.{extension}"


def refused_before_inspection(media_id: str, received_at: datetime, code: str, *, case_no: str,
                              **params: object) -> PreparedPhoto:
    """A photo refused before there were bytes to check (too big to download, no file on the platform)."""
    return PreparedPhoto(media_id, received_at, "", 0, None, rejection=Verdict.reject(code, **params),
                         case_no=case_no)


def case_no_of(key: str) -> str | None:
    """The case number an :func:`evidence_key` names (the case the photo was stored for); None for another key."""
    parts = key.split("/")
    return parts[3] if key.startswith(EVIDENCE_PREFIX) and len(parts) == 5 else None


def named_keys(session: Session, keys: Collection[str]) -> set[str]:
    """Of ``keys``, those a photo row names, and those this cannot tell (not an :func:`evidence_key`).

    Looked up by the digest each key carries (indexed), not by the case it names: a photo may be recorded in
    another case than the one it was stored for (its sender joined the other driver's case while it waited).
    """
    digests = {key: key.rsplit("/", 1)[-1].split(".", 1)[0] for key in keys}
    unreadable = {key for key, digest in digests.items()
                  if case_no_of(key) is None or len(digest) != 64 or not all(c in _HEX for c in digest)}
    wanted = set(keys) - unreadable
    rows = session.execute(select(Photo.object_key, Photo.thumb_key)
                           .where(Photo.sha256.in_(sorted({digests[key] for key in wanted})))) if wanted else ()
    return unreadable | {key for pair in rows for key in pair if key in wanted}


_HEX = frozenset("0123456789abcdef")


def discard(session: Session, runtime: Runtime, prepared: PreparedPhoto) -> None:
    """Delete what was stored for a photo that will have no row (its case closed meanwhile), unless a row holds
    the same bytes (keys are content addresses): retention deletes only what rows point to."""
    keys = [key for key in (prepared.object_key, prepared.thumb_key) if key]
    for key in set(keys) - named_keys(session, keys):
        runtime.store.delete(key)


def prepare_photo(runtime: Runtime, data: bytes, *, media_id: str, case_no: str,
                  received_at: datetime) -> PreparedPhoto:
    """Inspect and store one photo's bytes.

    Raises StorageUnavailable (store down) for the caller to retry; every
    problem of the photo itself is a rejection inside the returned PreparedPhoto.
    """
    settings = runtime.settings
    policy = policy_from(settings)
    try:
        facts, preview = inspect_image_with_preview(data, max_pixels=policy.max_pixels,
                                                    clearly_sharp=policy.clearly_sharp)
    except ImageRejected as rejected:
        # Kept all the same: nothing a driver sent is lost, even what we cannot use.
        digest = hashlib.sha256(data).hexdigest()
        key = evidence_key(case_no, received_at, digest, "bin")
        runtime.store.put(key, data, content_type="application/octet-stream",
                          metadata={"sha256": digest, "case_no": case_no, "rejected": rejected.code})
        return PreparedPhoto(media_id, received_at, digest, len(data), key, rejection=Verdict.from_rejection(rejected),
                             case_no=case_no)
    digest = facts.sha256
    key = evidence_key(case_no, received_at, digest, facts.extension)
    thumb_key = evidence_key(case_no, received_at, digest, "thumb.jpg")
    # The original first: a thumbnail never exists without its evidence.
    runtime.store.put(key, data, content_type=facts.content_type, metadata={"sha256": digest, "case_no": case_no})
    runtime.store.put(thumb_key, make_thumbnail(preview, orientation=facts.orientation),
                      content_type=THUMBNAIL_CONTENT_TYPE, metadata={"sha256-of-original": digest, "case_no": case_no})
    return PreparedPhoto(media_id, received_at, digest, len(data), key, thumb_key, facts, case_no=case_no)


def record_photo(session: Session, runtime: Runtime, *, case: Case, party: Party, prepared: PreparedPhoto,
                 inbound_id: int, now: datetime) -> PhotoOutcome:
    """Decide on a prepared photo within the case and record it (accepted or not); nothing is ever dropped.

    Accepted, it fills one of ``party``'s own checklist items (the one asked
    for, else the next missing, else an extra). Refused: a reason, and the
    bytes are kept all the same (``evidence_locked`` once the case is sealed
    and the desk asked this party for nothing). A photo that answers the
    desk's last pending retake renews the fingerprint and tells both parties.
    Once per push, with no look for an earlier row of it: the photo commits with its inbox message
    marked done, and a worker whose lease lapsed meanwhile rolls back on the lost lease (inbox.finish).
    """
    settings = runtime.settings
    own = items_of(settings, party.role)
    target, replacing = _target_item(case, party, own, len(settings.PHOTO_CHECKLIST))
    current = accepted_photos(case)
    verdict = prepared.rejection
    actor = Actor.of(party)
    if verdict is None and lifecycle.refusal(case, "add_photo", actor=actor, party=party, settings=settings,
                                             now=now) is not None:
        verdict = Verdict.reject("evidence_locked")  # kept all the same, as every photo a driver sends
    if verdict is None:
        assert prepared.facts is not None
        same_item = [p for p in current if p.item == target]
        if any(p.sha256 == prepared.sha256 for p in same_item):
            verdict = Verdict.reject("duplicate", item=target)
        else:
            others = [ExistingPhoto(p.item or 0, p.sha256 or "", _unsigned(p.phash)) for p in current
                      if p.item != target and p.sha256 and p.phash is not None]
            verdict = evaluate(prepared.facts, policy=policy_from(settings), received_at=prepared.received_at,
                               existing=others)
    photo = _photo_row(case, party, prepared, verdict, target, inbound_id, settings)
    answered_desk = False
    if verdict.accepted:
        lifecycle.apply(session, case, "add_photo", actor=actor, party=party, settings=settings, now=now,
                        after={"item": target, "sha256": prepared.sha256, "replaced": replacing})
        for old in current:
            if old.item == target:
                old.status = PhotoStatus.SUPERSEDED  # kept for the audit trail
        answered_desk = party.retake_item == target and party.retake_due_at is not None
        if party.retake_item == target:
            party.retake_item = party.retake_due_at = None
    else:
        touch(case, settings, now)  # a refused photo is the driver's activity all the same
    case.photos.append(photo)
    session.flush()
    retakes_done = answered_desk and _finish_retake(session, case, settings, now)
    metrics.count_on_commit(session, metrics.PHOTOS.labels(*(("accepted", "") if verdict.accepted
                                                             else ("rejected", verdict.code))))
    params = {"min_px": settings.PHOTO_MIN_SHORT_SIDE, "max_mb": settings.PHOTO_MAX_BYTES // 2**20,
              **verdict.params}
    return _outcome_of(photo, case, party, own, replaced=replacing and verdict.accepted, params=params,
                       retakes_done=retakes_done)


def _photo_row(case: Case, party: Party, prepared: PreparedPhoto, verdict: Verdict, target: int, inbound_id: int,
               settings: Settings) -> Photo:
    facts = prepared.facts
    return Photo(case_id=case.id, party_id=party.id, item=target if verdict.accepted else None,
                 kind=item_code(settings, target),
                 status=PhotoStatus.ACCEPTED if verdict.accepted else PhotoStatus.REJECTED,
                 reject_code=verdict.code, media_id=prepared.media_id, sha256=prepared.sha256 or None,
                 phash=_signed(facts.phash) if facts else None, object_key=prepared.object_key,
                 thumb_key=prepared.thumb_key, content_type=facts.content_type if facts else None,
                 width=facts.width if facts else None, height=facts.height if facts else None,
                 size_bytes=prepared.size_bytes, taken_at=verdict.taken_at,
                 capture_time_known=verdict.capture_time_known, warnings=list(verdict.warnings),
                 received_at=prepared.received_at, inbound_message_id=inbound_id)


def _finish_retake(session: Session, case: Case, settings: Settings, now: datetime) -> bool:
    """Once no party owes a photo the desk asked for: a new fingerprint, and the case resumes (both told)."""
    if lifecycle.refusal(case, "retake_done", actor=Actor.SYSTEM, settings=settings, now=now) is not None:
        return False
    before = case.evidence_fingerprint
    case.evidence_fingerprint = evidence_fingerprint(case)
    appointment = lifecycle.active_appointment(case)
    lifecycle.apply(session, case, "retake_done", actor=Actor.SYSTEM, settings=settings, now=now,
                    visit=Visit.of(appointment) if appointment else None,
                    before={"fingerprint": before}, after={"fingerprint": case.evidence_fingerprint})
    return True


def _target_item(case: Case, party: Party, own: list[int], checklist_length: int) -> tuple[int, bool]:
    """(item, replacing): the party's requested retake, its next missing own item, or an extra (numbered
    after the whole checklist, so it never takes the other party's item)."""
    have = {p.item for p in accepted_photos(case)}
    if party.retake_item in own:
        # "retake 3" before photo 3 was ever sent simply fills item 3.
        return party.retake_item, party.retake_item in have
    for item in own:
        if item not in have:
            return item, False
    return max([checklist_length, *(i for i in have if i)]) + 1, False


def _outcome_of(photo: Photo, case: Case, party: Party, own: list[int], *, replaced: bool = False,
                params: dict[str, object] | None = None, retakes_done: bool = False) -> PhotoOutcome:
    items = {p.item for p in accepted_photos(case) if p.item in own}
    accepted = photo.status is not PhotoStatus.REJECTED
    return PhotoOutcome(accepted=accepted, item=photo.item, code=photo.reject_code,
                        params=params or {}, warnings=list(photo.warnings or []), received=len(items),
                        required=len(own), replaced=replaced,
                        extra=bool(photo.item and photo.item not in own and photo.item > max(own, default=0)),
                        photo_id=photo.id, retakes_done=retakes_done)


def _signed(value: int) -> int:
    """Store a 64-bit perceptual hash in a signed BIGINT column."""
    return value - _INT64 if value >= 1 << 63 else value


def _unsigned(value: int | None) -> int:
    return 0 if value is None else value % _INT64
