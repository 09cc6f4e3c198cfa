"""Great-circle distances, to offer the desks nearest to the accident."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, TypeVar

# Mean Earth radius (IUGG); the spherical model is off by < 0.5 %, far below
# what matters when choosing between handling desks across a city.
EARTH_RADIUS_KM = 6371.0088


class Located(Protocol):
    @property
    def lat(self) -> float: ...

    @property
    def lng(self) -> float: ...


LocatedT = TypeVar("LocatedT", bound=Located)


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in km between two WGS-84 points given in degrees.

    Raises ValueError for a latitude outside -90..90, a longitude outside
    -180..180, or a non-finite coordinate.
    """
    for name, value, bound in (("lat1", lat1, 90), ("lng1", lng1, 180), ("lat2", lat2, 90), ("lng2", lng2, 180)):
        if not (math.isfinite(value) and -bound <= value <= bound):
            raise ValueError(f"{name} must be within -{bound}..{bound}, got {value!r}")
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = math.radians(lng2 - lng1)
    a = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    # Rounding can push a a hair above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def nearest(stations: Iterable[LocatedT], lat: float, lng: float,
            limit: int | None = None) -> list[tuple[LocatedT, float]]:
    """The stations closest to (lat, lng) with their distance in km, nearest first.

    Ties keep the input order. ``limit`` caps the result (None: all).
    Raises ValueError for a negative limit or invalid coordinates (see haversine_km).
    """
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    measured = [(station, haversine_km(lat, lng, station.lat, station.lng)) for station in stations]
    measured.sort(key=lambda pair: pair[1])  # stable: equal distances keep input order
    return measured if limit is None else measured[:limit]
