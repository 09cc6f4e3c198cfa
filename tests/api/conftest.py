"""API fixtures: booked cases with stored photos at two stations, tokens, and a client that sends them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import pytest

from accident_service.api import tokens
from accident_service.models import Case, PartyRole
from tests.booking import factories as make
from tests.conftest import T0

H = timedelta(hours=1)


@dataclass(frozen=True)
class Seeded:
    """What the seed wrote: case numbers by station code, free slot ids by station code."""

    cases: dict[str, list[str]]
    slots: dict[str, list[int]]

    @property
    def case_nos(self) -> list[str]:
        return [no for numbers in self.cases.values() for no in numbers]


def store_photo_bytes(runtime, case: Case) -> None:
    """Give each photo of ``case`` real stored bytes (and their sha256), as intake would."""
    for photo in case.photos:
        data = f"jpeg bytes of {case.case_no} item {photo.item}".encode()
        photo.sha256 = hashlib.sha256(data).hexdigest()
        photo.object_key = f"cases/2026/11/{case.case_no}/{photo.sha256}.jpg"
        photo.content_type, photo.size_bytes = "image/jpeg", len(data)
        runtime.store.put(photo.object_key, data, content_type="image/jpeg")


def ready_to_book(runtime, session, slot_id: int) -> Case:
    """A ready case with stored photos whose party A was offered ``slot_id`` (``make.choose`` books it)."""
    case = make.ready_case(session, T0)
    store_photo_bytes(runtime, case)
    case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = [slot_id], T0
    return case


@pytest.fixture
def seeded(runtime) -> Seeded:
    """Two stations, GZ-TH (two booked cases) and GZ-YX (one), with free slots later the same day; and one
    ready case, not yet handled anywhere."""
    to_book: dict[str, list[Case]] = {}
    slots: dict[str, list[int]] = {}
    with runtime.unit_of_work() as session:
        for code, km, count in (("GZ-TH", 0.0, 2), ("GZ-YX", 5.0, 1)):
            station = make.station(session, code, km_north=km)
            seat = make.slot(session, station, T0 + 4 * H, capacity=2)
            slots[code] = [make.slot(session, station, T0 + (5 + n) * H).id for n in range(3)]
            to_book[code] = [ready_to_book(runtime, session, seat.id) for _ in range(count)]
        make.ready_case(session, T0)
    for cases in to_book.values():
        for case in cases:
            assert make.choose(runtime, case.id, 1, now=T0).booked
    return Seeded({code: [case.case_no for case in cases] for code, cases in to_book.items()}, slots)


@pytest.fixture
def make_token(runtime):
    """make_token(name, scope="write", station=None) -> the bearer token (station None: all stations)."""
    def create(name: str, scope: str = "write", station: str | None = None) -> str:
        with runtime.unit_of_work() as session:
            return tokens.create_token(session, name=name, scope=scope, station_code=station,
                                       all_stations=station is None, now=runtime.clock.now())
    return create


class Api:
    """The test client speaking to /api/v1 with one token."""

    def __init__(self, client, token: str | None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **query):
        return self.client.get(f"/api/v1{path}", headers=self.headers, query_string=query)

    def post(self, path: str, body: dict | None = None, *, key: str | None = "k-1", headers: dict | None = None):
        sent = self.headers | ({"Idempotency-Key": key} if key else {}) | (headers or {})
        return self.client.post(f"/api/v1{path}", headers=sent, json=body)


@pytest.fixture
def api(client, make_token) -> Api:
    """A client with a write token for every station."""
    return Api(client, make_token("police-cms"))
