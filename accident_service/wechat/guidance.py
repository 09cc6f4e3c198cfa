"""What a driver is asked for next: one line, about their own part of the case.

Each party is prompted only for what it owns (its checklist photos, its
plate and phone; the reporter also for the location and for getting the
other driver to join), then told what the other driver still owes. Pure
functions over a loaded case.
"""

from __future__ import annotations

from accident_service import messages
from accident_service.cases import service as cases
from accident_service.models import Case, Party, PartyRole
from accident_service.settings import Settings


def item_name(settings: Settings, item: int, language: str) -> str:
    """A checklist item as drivers read it ("碰撞部位特写"), by its number."""
    code = cases.item_code(settings, item)
    key = f"checklist.{code}"
    return messages.text(key, language) if key in messages.catalogue() else code


def next_step(case: Case, party: Party, settings: Settings, language: str) -> tuple[str, bool]:
    """(the line telling ``party`` what to do next, whether it only waits for the other driver).

    Empty text when nothing is missing.
    """
    need = cases.missing(case, settings)
    own_photos = need.photos_of(party.role)
    if own_photos:
        item = own_photos[0]
        own = cases.items_of(settings, party.role)
        return messages.text("conv.ask_photo", language, n=item, item=item_name(settings, item, language),
                             done=len(own) - len(own_photos), total=len(own)), False
    if need.location and party.role is PartyRole.A:
        return messages.text("conv.ask_location", language), False
    mine = need.details_of(party.role)
    if "plate" in mine:
        return messages.text("conv.ask_plate", language), False
    if "phone" in mine:
        return messages.text("conv.ask_phone", language), False
    if need.party_b:
        return messages.text("conv.wait_party_b", language, join_code=case.join_code), True
    other = PartyRole.B if party.role is PartyRole.A else PartyRole.A
    waiting = [messages.text(f"conv.owed.{what}", language) for what in _owed_by(need, other)]
    if waiting:
        return messages.text("conv.wait_other", language, what="、".join(waiting) if language == "zh"
                             else ", ".join(waiting)), True
    return "", False


def _owed_by(need: cases.Missing, role: PartyRole) -> list[str]:
    owed = []
    if need.photos_of(role):
        owed.append("photos")
    if need.location and role is PartyRole.A:
        owed.append("location")
    owed += need.details_of(role)
    return owed
