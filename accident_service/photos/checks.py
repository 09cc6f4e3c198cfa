"""Is this photo usable as evidence? The pure core of the photo checks.

Nothing here touches Pillow, files or the clock: :func:`evaluate` judges the
facts that :mod:`accident_service.photos.inspect` decoded, against a
:class:`PhotoPolicy`, the time the photo was received and the photos the case
already holds. The decoding shell reports what it cannot even decode by
raising :class:`ImageRejected`; :meth:`Verdict.from_rejection` turns that into
the same kind of answer, so callers handle one result type.

Every rejection carries a stable machine-readable ``code`` and ``params`` for
the driver's message, looked up as ``photos.reject.<code>`` in the message
catalogue (``accident_service/catalogue/photos.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the core must not import the decoder
    from accident_service.photos.inspect import ImageFacts

#: Pillow warns about decompression bombs at 89.5 million pixels; we stop well
#: below, so a rejected upload never costs more than ~150 MB of RGB pixels.
DEFAULT_MAX_PIXELS = 50_000_000
#: Quick-look (500 px) sharpness above which no closer look is needed; see
#: ``measures.sharpness`` for the calibration.
DEFAULT_CLEARLY_SHARP = 100.0

REJECTION_CODES = (
    "not_an_image",
    "truncated",
    "unsupported_format",
    "too_many_pixels",
    "too_small",
    "too_blurry",
    "duplicate",
    "near_duplicate",
    "evidence_locked",  # the case is booked: its evidence is sealed unless the desk asks for a retake
    "too_large",  # bigger than PHOTO_MAX_BYTES: the download was cut there, nothing of it kept
    "media_unavailable",  # the platform has no file for it any more (kept three days) or never had one
)
WARNING_CODES = ("capture_time_old", "capture_time_future", "capture_time_unknown")
#: Camera clocks drift and EXIF times carry no zone unless the phone wrote one:
#: only a capture time later than the receipt by more than this is flagged.
CAPTURE_CLOCK_SLACK = timedelta(hours=1)


class ImageRejected(Exception):
    """The upload cannot be used; ``code`` says why, ``params`` fill the message.

    Raised by the decoding shell for ``not_an_image``, ``truncated``,
    ``unsupported_format`` and ``too_many_pixels``. ``params`` hold only
    JSON-friendly values so they can be stored with the inbound message.
    """

    http_status = 422

    def __init__(self, code: str, **params: object) -> None:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown photo rejection code {code!r}")
        super().__init__(code)
        self.code = code
        self.params = params

    @property
    def message_key(self) -> str:
        return f"photos.reject.{self.code}"

    def __repr__(self) -> str:
        return f"ImageRejected({self.code!r}, **{self.params!r})"


@dataclass(frozen=True)
class PhotoPolicy:
    """Thresholds for accepting a photo; see ``measures.sharpness`` for the calibration.

    ``min_sharpness`` 5.0 (judged at 1000 px) sits between the softest sharp
    12 MP test photo (10.3) and the sharpest one blurred by a phone-shake
    Gaussian of sigma 8 px (3.0). ``clearly_sharp`` 100 (quick look at 500 px)
    is 1.37x above every photo the judge rejects; the inspecting shell gets
    it too, to know when the quick look suffices. ``near_duplicate_distance`` 10 (of 64 bits) catches re-encodes
    (distance 0-2) and most 2 % crops (2-12) of the same photo, while different
    photographs measured 22 or more apart.
    """

    min_short_side: int = 720
    min_sharpness: float = 5.0
    clearly_sharp: float = DEFAULT_CLEARLY_SHARP
    max_pixels: int = DEFAULT_MAX_PIXELS
    near_duplicate_distance: int = 10
    max_capture_age: timedelta = timedelta(hours=2)


@dataclass(frozen=True)
class ExistingPhoto:
    """A photo the case already holds, as far as duplicate checks need it.

    ``item`` is the checklist number the driver sees (1-based).
    """

    item: int
    sha256: str
    phash: int


@dataclass(frozen=True)
class Verdict:
    """The answer for one upload: accepted or rejected with a code, plus desk warnings."""

    accepted: bool
    code: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    taken_at: datetime | None = None
    capture_time_known: bool = False

    @classmethod
    def reject(cls, code: str, **params: object) -> Verdict:
        """A rejection; raises ValueError for a code outside REJECTION_CODES."""
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown photo rejection code {code!r}")
        return cls(accepted=False, code=code, params=dict(params))

    @classmethod
    def from_rejection(cls, error: ImageRejected) -> Verdict:
        return cls.reject(error.code, **error.params)

    @property
    def message_key(self) -> str | None:
        """Catalogue key of the driver's reason, None when accepted."""
        return None if self.code is None else f"photos.reject.{self.code}"

    @property
    def warning_keys(self) -> list[str]:
        return [f"photos.warning.{warning}" for warning in self.warnings]


def hamming_distance(left: int, right: int) -> int:
    """Number of differing bits between two perceptual hashes."""
    return (left ^ right).bit_count()


def evaluate(
    facts: ImageFacts,
    *,
    policy: PhotoPolicy,
    received_at: datetime,
    existing: Sequence[ExistingPhoto],
) -> Verdict:
    """Judge a decoded photo; never raises for anything the photo contains.

    ``existing`` are the photos already accepted for the *other* checklist
    items of the case: the caller leaves out the item being (re)taken, so a
    retake of the same view is not refused as a near-duplicate of itself.
    An exact copy is named first because it tells the driver the most.

    A capture time older than ``policy.max_capture_age`` only adds the
    ``capture_time_old`` warning for the desk (``capture_time_future`` for
    one later than the receipt: a wrong camera clock); a photo without one gets
    ``capture_time_unknown``. Neither rejects: stripped EXIF is normal for
    photos forwarded through chat apps.

    Raises ValueError if ``received_at`` is naive (the comparison with the
    EXIF time would silently depend on the server's zone).
    """
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")

    rejection = _rejection(facts, policy, existing)
    if rejection is not None:
        return rejection

    warnings: list[str] = []
    if facts.taken_at is None:
        warnings.append("capture_time_unknown")
    elif received_at - facts.taken_at > policy.max_capture_age:
        warnings.append("capture_time_old")
    elif facts.taken_at - received_at > CAPTURE_CLOCK_SLACK:
        warnings.append("capture_time_future")
    return Verdict(
        accepted=True,
        warnings=warnings,
        taken_at=facts.taken_at,
        capture_time_known=facts.taken_at is not None,
    )


def _rejection(facts: ImageFacts, policy: PhotoPolicy, existing: Sequence[ExistingPhoto]) -> Verdict | None:
    for photo in existing:
        if photo.sha256 == facts.sha256:
            return Verdict.reject("duplicate", item=photo.item)

    if facts.width * facts.height > policy.max_pixels:
        # The shell enforces its own cap; this keeps a stricter policy honest.
        return Verdict.reject(
            "too_many_pixels",
            pixels=facts.width * facts.height,
            max_pixels=policy.max_pixels,
            max_megapixels=policy.max_pixels // 1_000_000,
        )

    if min(facts.width, facts.height) < policy.min_short_side:
        return Verdict.reject("too_small", min_px=policy.min_short_side, width=facts.width, height=facts.height)

    # A quick-look value is on another scale; it only ever accepts.
    min_sharpness = policy.clearly_sharp if facts.quick_look else policy.min_sharpness
    if facts.sharpness < min_sharpness:
        return Verdict.reject("too_blurry", sharpness=round(facts.sharpness, 2), min_sharpness=min_sharpness)

    nearest = _nearest(facts.phash, existing)
    if nearest is not None and nearest[0] <= policy.near_duplicate_distance:
        distance, item = nearest
        return Verdict.reject("near_duplicate", item=item, distance=distance)
    return None


def _nearest(phash: int, existing: Sequence[ExistingPhoto]) -> tuple[int, int] | None:
    """(distance, item) of the most similar existing photo, lowest item on ties."""
    candidates = [(hamming_distance(phash, photo.phash), photo.item) for photo in existing]
    return min(candidates) if candidates else None
