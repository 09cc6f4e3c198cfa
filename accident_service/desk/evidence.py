"""Do the stored originals still match the evidence fingerprint? Re-hashed on demand, never trusted from rows.

The fingerprint the drivers were sent (``Case.evidence_fingerprint``) is
computed from the sha256 each photo had when it arrived. This reads every
accepted original back from storage, hashes it again and recomputes the
fingerprint from those hashes: a changed or missing object shows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy.orm import Session

from accident_service.cases.service import accepted_photos, fingerprint_of
from accident_service.desk.case_file import load_case
from accident_service.storage import ObjectStore, StorageUnavailable

MATCH, CHANGED, MISSING, UNAVAILABLE = "match", "changed", "missing", "unavailable"


@dataclass(frozen=True)
class OriginalCheck:
    item: int | None
    state: str  # MATCH, CHANGED, MISSING or UNAVAILABLE (the store did not answer)


@dataclass(frozen=True)
class EvidenceCheck:
    fingerprint: str | None  # as sent to the drivers (None before the first booking)
    recomputed: str | None  # from the stored bytes; None when some could not be read
    originals: tuple[OriginalCheck, ...]

    @property
    def matches(self) -> bool:
        """Every original is there with its recorded hash, and they add up to the fingerprint sent."""
        intact = all(check.state == MATCH for check in self.originals)
        return intact and (self.fingerprint is None or self.recomputed == self.fingerprint)


def recheck_originals(session: Session, store: ObjectStore, case_no: str, *, station_id: int | None) -> EvidenceCheck:
    """Hash every accepted original of the case as stored now. Raises NotFound (out of scope)."""
    case = load_case(session, case_no, station_id=station_id)
    checks, hashes = [], []
    for photo in sorted(accepted_photos(case), key=lambda p: (p.item or 0, p.id)):
        state, digest = _rehash(store, photo.object_key, photo.sha256)
        checks.append(OriginalCheck(photo.item, state))
        hashes.append((photo.item, digest))
    readable = all(digest is not None for _, digest in hashes)
    return EvidenceCheck(fingerprint=case.evidence_fingerprint,
                         recomputed=fingerprint_of(hashes) if readable else None, originals=tuple(checks))


def _rehash(store: ObjectStore, key: str | None, recorded: str | None) -> tuple[str, str | None]:
    if not key:
        return MISSING, None
    try:
        data = store.get(key).data
    except FileNotFoundError:
        return MISSING, None
    except StorageUnavailable:
        return UNAVAILABLE, None
    digest = hashlib.sha256(data).hexdigest()
    return (MATCH if digest == recorded else CHANGED), digest
