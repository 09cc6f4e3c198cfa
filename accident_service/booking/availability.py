"""Which slots to offer: the earliest with room at the stations nearest the accident."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service.booking.geo import nearest
from accident_service.booking.stations import active_stations
from accident_service.models import Slot, Station
from accident_service.settings import Settings

#: A place farther than this from every desk is most likely not the accident's: a phone's stale fix, a pin dropped
#: in the wrong town. The driver is asked to check it (it is kept: the desks may be the ones missing). Every road of a
#: city, a large municipality's included, lies well within this of one of its desks.
FAR_FROM_EVERY_DESK_KM = 100.0


@dataclass(frozen=True)
class Offer:
    """One bookable slot as shown to a driver."""

    slot_id: int
    station: Station
    starts_at: datetime
    ends_at: datetime
    distance_km: float | None  # None when the case has no location


def find_offers(session: Session, settings: Settings, *, lat: float | None, lng: float | None, now: datetime,
                exclude_slot_ids: Collection[int] = ()) -> list[Offer]:
    """Up to BOOKING_OFFER_COUNT slots with room, earliest first, at the nearest stations.

    Only the BOOKING_NEAREST_STATIONS active stations closest to (lat, lng)
    are searched (all of them, in code order, without a location); slots
    start no earlier than now + BOOKING_LEAD_MINUTES and before now +
    BOOKING_SEARCH_DAYS. Equal start times list the nearer station first.
    Returns [] when nothing is free. Raises ValueError for invalid coordinates.
    """
    stations = active_stations(session)
    if lat is not None and lng is not None:
        ranked = nearest(stations, lat, lng, limit=settings.BOOKING_NEAREST_STATIONS)
    else:
        ranked = [(station, None) for station in stations]
    if not ranked or settings.BOOKING_OFFER_COUNT <= 0:
        return []
    distance = {station.id: km for station, km in ranked}
    by_id = {station.id: station for station, _ in ranked}
    count = settings.BOOKING_OFFER_COUNT
    query = (select(Slot.id, Slot.station_id, Slot.starts_at, Slot.ends_at)
             .where(Slot.station_id.in_(list(by_id)), Slot.booked < Slot.capacity,
                    Slot.starts_at >= now + timedelta(minutes=settings.BOOKING_LEAD_MINUTES),
                    Slot.starts_at < now + timedelta(days=settings.BOOKING_SEARCH_DAYS))
             .order_by(Slot.starts_at, Slot.id)
             # Enough rows that every station can tie at the last start time shown.
             .limit(count * len(by_id) + len(exclude_slot_ids)))
    rows = [row for row in session.execute(query) if row.id not in exclude_slot_ids]
    rank = {station.id: position for position, (station, _) in enumerate(ranked)}
    rows.sort(key=lambda row: (row.starts_at, rank[row.station_id]))
    return [Offer(row.id, by_id[row.station_id], row.starts_at, row.ends_at, distance[row.station_id])
            for row in rows[:count]]


def nearest_desk_if_far(session: Session, *, lat: float, lng: float) -> tuple[Station, float] | None:
    """The nearest active station and its distance in km, when even it is farther than
    :data:`FAR_FROM_EVERY_DESK_KM` from (lat, lng); None otherwise, or when there is no active station."""
    ranked = nearest(active_stations(session), lat, lng, limit=1)
    return ranked[0] if ranked and ranked[0][1] > FAR_FROM_EVERY_DESK_KM else None
