import math
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accident_service.booking.geo import EARTH_RADIUS_KM, haversine_km, nearest
from accident_service.booking.station_file import load_station_file

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "stations.example.yaml"
CANTON_TOWER = (23.1089, 113.3247)
BAIYUN_AIRPORT = (23.3925, 113.2989)

latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)
points = st.tuples(latitudes, longitudes)


class Point(NamedTuple):
    name: str
    lat: float
    lng: float


def test_canton_tower_to_baiyun_airport_is_about_32_km():
    assert haversine_km(*CANTON_TOWER, *BAIYUN_AIRPORT) == pytest.approx(31.6, abs=1.0)


def test_beijing_to_shanghai_is_about_1067_km():
    assert haversine_km(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(1067, abs=5)


def test_one_degree_along_a_meridian():
    assert haversine_km(10, 50, 11, 50) == pytest.approx(EARTH_RADIUS_KM * math.pi / 180, rel=1e-9)


def test_antipodes_are_half_the_circumference_apart():
    assert haversine_km(0, 0, 0, 180) == pytest.approx(EARTH_RADIUS_KM * math.pi, rel=1e-9)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(EARTH_RADIUS_KM * math.pi, rel=1e-9)


@pytest.mark.parametrize("coords", [(91, 0, 0, 0), (0, 0, 0, -180.5), (math.nan, 0, 0, 0), (0, math.inf, 0, 0)])
def test_invalid_coordinates_are_refused(coords):
    with pytest.raises(ValueError):
        haversine_km(*coords)


@settings(max_examples=200, deadline=None)
@given(points)
def test_distance_to_itself_is_zero(p):
    assert haversine_km(*p, *p) == 0


@settings(max_examples=200, deadline=None)
@given(points, points)
def test_distance_is_symmetric_and_bounded(p, q):
    d = haversine_km(*p, *q)
    assert d == pytest.approx(haversine_km(*q, *p), abs=1e-9)
    assert 0 <= d <= EARTH_RADIUS_KM * math.pi + 1e-9


@settings(max_examples=300, deadline=None)
@given(points, points, points)
def test_triangle_inequality(p, q, r):
    # asin loses precision near antipodes: allow a metre of rounding.
    assert haversine_km(*p, *r) <= haversine_km(*p, *q) + haversine_km(*q, *r) + 1e-3


def test_nearest_sorts_by_distance_and_applies_the_limit():
    stations = load_station_file(EXAMPLE)
    ranked = nearest(stations, *CANTON_TOWER, limit=3)
    assert [s.code for s, _ in ranked] == ["GZ-HZ", "GZ-TH", "GZ-YX"]
    distances = [km for _, km in ranked]
    assert distances == sorted(distances)
    assert distances[0] < 2
    assert nearest(stations, *BAIYUN_AIRPORT, 1)[0][0].code == "GZ-BY"


def test_nearest_without_limit_returns_all_and_ties_keep_input_order():
    east, west, far = Point("east", 0, 1), Point("west", 0, -1), Point("far", 0, 5)
    assert [p.name for p, _ in nearest([far, east, west], 0, 0)] == ["east", "west", "far"]
    assert [p.name for p, _ in nearest([far, west, east], 0, 0)] == ["west", "east", "far"]


def test_nearest_edge_cases():
    assert nearest([], 23, 113, 3) == []
    assert nearest([Point("a", 0, 0)], 0, 0, 0) == []
    with pytest.raises(ValueError):
        nearest([Point("a", 0, 0)], 0, 0, -1)
    with pytest.raises(ValueError):
        nearest([Point("a", 0, 0)], 95, 0, 1)
