"""Photo intake: download, check, store (network work), then record (one transaction).

``prepare_photo`` runs outside any database transaction: it streams the media
from WeChat with a byte cap and a timeout, inspects it at reduced scale and
stores the original, byte for byte, content-addressed
(``cases/<yyyy>/<mm>/<case_no>/<sha256>.<ext>``, with its content type and
``sha256``/``case_no`` metadata) and a 320-px upright thumbnail beside it.
A retry stores identical bytes under the same key, so it is harmless; a
transient failure (WeChat busy, network, storage down) is raised for the
inbox to retry with backoff. ``record_photo`` then decides against the
case's other photos (duplicates, retakes) and writes the Photo row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service import metrics
from accident_service.cases.service import accepted_photos, evidence_sealed
from accident_service.models import Case, Party, Photo, PhotoStatus
from accident_service.photos.checks import ExistingPhoto, ImageRejected, PhotoPolicy, Verdict, evaluate
from accident_service.photos.inspect import ImageFacts, inspect_image_with_preview
from accident_service.photos.thumbnails import THUMBNAIL_CONTENT_TYPE, make_thumbnail
from accident_service.runtime import Runtime
from accident_service.settings import Settings
from accident_service.wechat.client import MediaTooLarge, WeChatApiError

#: A photo moves up to 10 MB where an API call moves a few hundred bytes, so
#: its download gets this many API timeouts (20 s by default; the inbox lease is 60 s).
DOWNLOAD_TIMEOUT_FACTOR = 4
_INT64 = 1 << 64


class TransientPhotoError(Exception):
    """The photo could not be fetched or stored right now; the message is retried."""


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


def policy_from(settings: Settings) -> PhotoPolicy:
    return PhotoPolicy(min_short_side=settings.PHOTO_MIN_SHORT_SIDE, max_pixels=settings.PHOTO_MAX_PIXELS,
                       max_capture_age=timedelta(minutes=settings.PHOTO_MAX_CAPTURE_AGE_MINUTES))


def download_timeout(settings: Settings) -> float:
    """Bounds each socket wait and the whole download of one photo, in seconds."""
    return DOWNLOAD_TIMEOUT_FACTOR * settings.WECHAT_API_TIMEOUT_SECONDS


def evidence_key(case_no: str, received_at: datetime, sha256: str, extension: str) -> str:
    return f"cases/{received_at:%Y}/{received_at:%m}/{case_no}/{sha256}.{extension}"


def prepare_photo(runtime: Runtime, *, media_id: str, case_no: str, received_at: datetime) -> PreparedPhoto:
    """Fetch, inspect and store one photo.

    Raises StorageUnavailable (store down) and WeChatApiError unless it is
    ``permanent`` (platform busy, network, timeout, configuration) for the
    caller to retry; every problem of the photo itself is a rejection inside
    the returned PreparedPhoto.
    """
    settings = runtime.settings
    try:
        media = runtime.wechat.download_media(media_id, max_bytes=settings.PHOTO_MAX_BYTES,
                                              timeout=download_timeout(settings))
    except MediaTooLarge:
        # The stream was cut at the cap: nothing of it is kept, so no object either.
        return PreparedPhoto(media_id, received_at, "", 0, None,
                             rejection=Verdict.reject("too_many_pixels", max_mb=settings.PHOTO_MAX_BYTES // 2**20))
    except WeChatApiError as exc:
        if not exc.permanent:
            raise
        # The platform has no file for this id (expired, or a link rather than a photo).
        code = "truncated" if exc.errcode is not None else "not_an_image"
        return PreparedPhoto(media_id, received_at, "", 0, None, rejection=Verdict.reject(code))
    data = media.data
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
        return PreparedPhoto(media_id, received_at, digest, len(data), key, rejection=Verdict.from_rejection(rejected))
    digest = facts.sha256
    key = evidence_key(case_no, received_at, digest, facts.extension)
    thumb_key = evidence_key(case_no, received_at, digest, "thumb.jpg")
    # The original first: a thumbnail never exists without its evidence.
    runtime.store.put(key, data, content_type=facts.content_type, metadata={"sha256": digest, "case_no": case_no})
    runtime.store.put(thumb_key, make_thumbnail(preview, orientation=facts.orientation),
                      content_type=THUMBNAIL_CONTENT_TYPE, metadata={"sha256-of-original": digest, "case_no": case_no})
    return PreparedPhoto(media_id, received_at, digest, len(data), key, thumb_key, facts)


def record_photo(session: Session, runtime: Runtime, *, case: Case, party: Party, prepared: PreparedPhoto,
                 inbound_id: int, now: datetime) -> PhotoOutcome:
    """Decide on a prepared photo within the case and record it (accepted or not)."""
    settings = runtime.settings
    required = len(settings.PHOTO_CHECKLIST)
    existing_row = session.scalar(select(Photo).where(Photo.inbound_message_id == inbound_id))
    if existing_row is not None:  # defensive: the inbox already guarantees one effect
        return _outcome_of(existing_row, case, required)
    target, replacing = _target_item(case, party, required)
    current = accepted_photos(case)
    verdict = prepared.rejection
    if verdict is None and evidence_sealed(case, party):
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
    facts = prepared.facts
    photo = Photo(case_id=case.id, party_id=party.id, item=target if verdict.accepted else None,
                  kind=_kind(settings, target),
                  status=PhotoStatus.ACCEPTED if verdict.accepted else PhotoStatus.REJECTED,
                  reject_code=verdict.code, media_id=prepared.media_id, sha256=prepared.sha256 or None,
                  phash=_signed(facts.phash) if facts else None, object_key=prepared.object_key,
                  thumb_key=prepared.thumb_key, content_type=facts.content_type if facts else None,
                  width=facts.width if facts else None, height=facts.height if facts else None,
                  size_bytes=prepared.size_bytes, taken_at=verdict.taken_at,
                  capture_time_known=verdict.capture_time_known, warnings=list(verdict.warnings),
                  received_at=prepared.received_at, inbound_message_id=inbound_id)
    if verdict.accepted:
        for old in current:
            if old.item == target:
                old.status = PhotoStatus.SUPERSEDED  # kept for the audit trail
        if party.retake_item == target:
            party.retake_item = None
    case.photos.append(photo)
    session.flush()
    metrics.PHOTOS.labels(*(("accepted", "") if verdict.accepted else ("rejected", verdict.code))).inc()
    params = {"min_px": settings.PHOTO_MIN_SHORT_SIDE, "max_mb": settings.PHOTO_MAX_BYTES // 2**20,
              **verdict.params}
    return _outcome_of(photo, case, required, replaced=replacing and verdict.accepted, params=params)


def _target_item(case: Case, party: Party, required: int) -> tuple[int, bool]:
    """(item, replacing): a requested retake, the next missing item, or an extra."""
    have = {p.item for p in accepted_photos(case)}
    if party.retake_item and 1 <= party.retake_item <= required:
        # "retake 3" before photo 3 was ever sent simply fills item 3.
        return party.retake_item, party.retake_item in have
    for item in range(1, required + 1):
        if item not in have:
            return item, False
    return max([required, *(i for i in have if i)]) + 1, False


def _outcome_of(photo: Photo, case: Case, required: int, *, replaced: bool = False,
                params: dict[str, object] | None = None) -> PhotoOutcome:
    items = {p.item for p in accepted_photos(case) if p.item and p.item <= required}
    accepted = photo.status is not PhotoStatus.REJECTED
    return PhotoOutcome(accepted=accepted, item=photo.item, code=photo.reject_code,
                        params=params or {}, warnings=list(photo.warnings or []), received=len(items),
                        required=required, replaced=replaced, extra=bool(photo.item and photo.item > required),
                        photo_id=photo.id)


def _kind(settings: Settings, item: int) -> str:
    checklist = settings.PHOTO_CHECKLIST
    return checklist[item - 1] if 1 <= item <= len(checklist) else "extra"


def _signed(value: int) -> int:
    """Store a 64-bit perceptual hash in a signed BIGINT column."""
    return value - _INT64 if value >= 1 << 63 else value


def _unsigned(value: int | None) -> int:
    return 0 if value is None else value % _INT64
