"""Who is calling the API: an integration's token or a signed-in desk officer, in one shape."""

from __future__ import annotations

from dataclasses import dataclass

from accident_service.api.tokens import TokenHolder
from accident_service.desk.auth import Staff
from accident_service.models import API_TOKEN_ACTOR_PREFIX, TokenScope


@dataclass(frozen=True)
class Caller:
    """What the API needs to know about whoever sent a request."""

    kind: str  # "token" or "staff"
    name: str  # how audit events name them: the token's name ("token:insurer-x") or the officer's username
    owner: str  # whose Idempotency-Keys: "token:<id>" or "staff:<id>" (ids, so a renamed officer keeps theirs)
    station_id: int | None  # the one station they see; None: every station
    can_write: bool

    @classmethod
    def of_token(cls, holder: TokenHolder) -> Caller:
        return cls("token", f"{API_TOKEN_ACTOR_PREFIX}{holder.name}", f"token:{holder.id}", holder.station_id,
                   holder.scope is TokenScope.WRITE)

    @classmethod
    def of_staff(cls, staff: Staff) -> Caller:
        return cls("staff", staff.username, f"staff:{staff.id}", staff.station_scope, True)
