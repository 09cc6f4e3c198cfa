"""Reading through the API: case detail and dossier, lists with filters and cursors, stations and slots."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import select

from accident_service.cases.service import fingerprint_of
from accident_service.desk.actions import station_of
from accident_service.models import Case, Photo, PhotoStatus, Station
from tests.api.conftest import H
from tests.booking import factories as make
from tests.conftest import T0


def fetch(client, url: str) -> bytes:
    """Follow a presigned link (the local store serves them on this app)."""
    parts = urlsplit(url)
    answer = client.get(parts.path + (f"?{parts.query}" if parts.query else ""))
    assert answer.status_code == 200, url
    return answer.data


def test_case_detail_has_parties_photos_with_working_links_the_appointment_and_audit(api, client, seeded):
    case_no = seeded.cases["GZ-TH"][0]
    case = api.get(f"/cases/{case_no}").json
    assert [p["role"] for p in case["parties"]] == ["A", "B"] and all(p["phone"] for p in case["parties"])
    assert case["appointment"]["station"]["code"] == "GZ-TH" and case["appointment"]["status"] == "booked"
    assert [e["action"] for e in case["audit_events"]] == ["case.book"]
    assert len(case["photos"]) == 4
    for photo in case["photos"]:
        assert hashlib.sha256(fetch(client, photo["url"])).hexdigest() == photo["sha256"]
        assert photo["url_expires_at"] == (T0 + timedelta(seconds=300)).isoformat()
    assert case["fingerprint"] == fingerprint_of((p["item"], p["sha256"]) for p in case["photos"])


def test_the_dossier_lists_the_evidence_with_every_sha256_and_the_fingerprint_they_make(api, seeded, runtime):
    case_no = seeded.cases["GZ-TH"][0]
    with runtime.unit_of_work() as session:  # a retaken photo: the old one is superseded, the new one evidence
        case = session.scalar(select(Case).where(Case.case_no == case_no))
        old = next(p for p in case.photos if p.item == 2)
        old.status = PhotoStatus.SUPERSEDED
        session.add(Photo(case_id=case.id, item=2, kind="item2", status=PhotoStatus.ACCEPTED, received_at=T0,
                          sha256=hashlib.sha256(b"retake").hexdigest()))
    dossier = api.get(f"/cases/{case_no}/dossier").json
    assert sorted(p["item"] for p in dossier["photos"]) == [1, 2, 3, 4]
    assert [p["status"] for p in dossier["superseded_photos"]] == ["superseded"]
    assert all(len(p["sha256"]) == 64 for p in dossier["photos"] + dossier["superseded_photos"])
    assert dossier["fingerprint"] == fingerprint_of((p["item"], p["sha256"]) for p in dossier["photos"])
    assert dossier["notified_fingerprint"] != dossier["fingerprint"]  # told at booking, before the retake
    assert dossier["parties"][0]["plate"] and dossier["appointment"]["station"]["code"] == "GZ-TH"
    assert dossier["outcome"] is None


def test_filters(api, seeded, runtime):
    def numbers(**query) -> list[str]:
        return [c["case_no"] for c in api.get("/cases", **query).json["items"]]

    th, yx = seeded.cases["GZ-TH"], seeded.cases["GZ-YX"]
    assert numbers(station="GZ-TH") == th
    assert numbers(status="booked") == th + yx
    assert len(numbers(status=["ready", "booked"])) == 4
    assert numbers(station="NOPE") == []
    assert numbers(date="2026-11-25") == th + yx and numbers(date="2026-11-26") == []
    with runtime.unit_of_work() as session:
        plate = session.scalar(select(Case).where(Case.case_no == yx[0])).parties[1].plate
    assert numbers(plate=plate) == yx and numbers(plate=plate.lower()) == yx
    assert numbers(plate=f"{plate[:2].lower()}·{plate[2:]}") == yx and numbers(plate=plate[2:]) == []
    api.post(f"/cases/{yx[0]}/confirm", key="c")  # at T0: updated_since T0 finds every case
    assert numbers(updated_since=(T0 + timedelta(seconds=1)).isoformat()) == []
    bad = api.get("/cases", status="lost")
    assert bad.status_code == 422 and bad.json["code"] == "invalid_input"


def test_the_description_says_the_plate_filter_takes_whole_plates(client):
    """It is not the desk's search box, which matches parts of a plate: an integrator must not guess."""
    listing = client.get("/api/v1/openapi.json").json["paths"]["/api/v1/cases"]["get"]
    plate = next(p for p in listing["parameters"] if p["name"] == "plate")
    assert "whole plate" in plate["description"] and "part of a plate finds nothing" in plate["description"]


def test_pages_are_stable_while_cases_are_added_and_changed(api, seeded, runtime, clock):
    first = api.get("/cases", limit=2).json
    assert len(first["items"]) == 2 and first["next_cursor"]
    clock.advance(timedelta(minutes=1))
    with runtime.unit_of_work() as session:
        added = make.ready_case(session, clock.now()).case_no
    changed = first["items"][0]["case_no"]
    api.post(f"/cases/{changed}/confirm", key="later")  # moves to the end of the (updated_at, id) order
    seen = [c["case_no"] for c in first["items"]]
    cursor = first["next_cursor"]
    for _ in range(10):
        page = api.get("/cases", limit=2, cursor=cursor).json
        seen += [c["case_no"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[-2:] == [changed, added]  # changed after the first page: seen again, with its new state
    assert len(seen) == len(set(seen)) + 1
    refused = api.get("/cases", cursor="not-a-cursor")
    assert refused.status_code == 400 and refused.json["code"] == "invalid_cursor"


def test_a_case_is_listed_at_the_station_the_desk_would_find_it(api, client, make_token, seeded, runtime):
    """The list's SQL scope agrees with desk.actions.station_of (the station of the latest appointment)."""
    moved = seeded.cases["GZ-TH"][1]
    assert api.post(f"/cases/{moved}/reschedule", {"slot_id": seeded.slots["GZ-YX"][0]}, key="m").status_code == 200
    with runtime.unit_of_work() as session:
        cases = session.scalars(select(Case)).all()
        stations = session.execute(select(Station.code, Station.id)).all()
        expected = {code: sorted(c.case_no for c in cases if station_of(c) == station_id)
                    for code, station_id in stations}
    assert expected["GZ-YX"] == sorted(seeded.cases["GZ-YX"] + [moved])
    for code in ("GZ-TH", "GZ-YX"):
        assert sorted(c["case_no"] for c in api.get("/cases", station=code, limit=200).json["items"]) \
            == expected[code]


def test_audit_events_page_by_cursor(api, seeded):
    case_no = seeded.cases["GZ-TH"][0]
    api.post(f"/cases/{case_no}/confirm", key="1")
    api.post(f"/cases/{case_no}/check-in", key="2")
    first = api.get("/audit-events", limit=2).json
    second = api.get("/audit-events", limit=2, cursor=first["next_cursor"]).json
    third = api.get("/audit-events", limit=2, cursor=second["next_cursor"]).json
    ids = [e["id"] for e in first["items"] + second["items"] + third["items"]]
    assert ids == sorted(ids) and len(ids) == 5 and third["next_cursor"] is None
    mine = api.get("/audit-events", case_no=case_no, action="case.check_in").json["items"]
    assert [(e["case_no"], e["before"], e["after"]) for e in mine] == \
        [(case_no, {"status": "confirmed"}, {"status": "checked_in"})]
    assert api.get(f"/cases/{case_no}/audit-events").json[-1]["action"] == "case.check_in"


def test_free_slots_are_those_with_a_seat_not_yet_started(api, seeded, runtime, clock):
    with runtime.unit_of_work() as session:
        station = session.scalar(select(Case).where(Case.case_no == seeded.cases["GZ-TH"][0])).appointments[0] \
            .slot.station
        full = make.slot(session, station, T0 + 9 * H, capacity=1, booked=1)
        tomorrow = make.slot(session, station, T0 + 24 * H)
        full_id, tomorrow_id = full.id, tomorrow.id
    today = api.get("/stations/GZ-TH/slots").json
    ids = [s["id"] for s in today["slots"]]
    assert today["station"]["code"] == "GZ-TH" and full_id not in ids and tomorrow_id not in ids
    assert seeded.slots["GZ-TH"] == [s for s in ids if s in seeded.slots["GZ-TH"]]
    assert all(s["free"] == s["capacity"] - s["booked"] > 0 for s in today["slots"])
    assert len(ids) == 3  # the 14:00 slot holds both GZ-TH cases: full
    assert tomorrow_id in [s["id"] for s in api.get("/stations/GZ-TH/slots", days=2).json["slots"]]
    assert [s["id"] for s in api.get("/stations/GZ-TH/slots", date="2026-11-26").json["slots"]] == [tomorrow_id]
    clock.advance(6 * H)  # 16:00 in Guangzhou: the earlier slots have started
    assert all(s["starts_at"] > clock.now().isoformat() for s in api.get("/stations/GZ-TH/slots").json["slots"])
    assert api.get("/stations/NOPE/slots").status_code == 404


def test_stations_list(api, seeded):
    assert [(s["code"], s["desks"], s["timezone"]) for s in api.get("/stations").json] == \
        [("GZ-TH", 2, "Asia/Shanghai"), ("GZ-YX", 2, "Asia/Shanghai")]


