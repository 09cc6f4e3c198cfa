"""The integrator's scenario end to end, as a client that knows only the OpenAPI description and a token.

Two drivers report and book through the WeChat emulator; the token comes
from the real console script (a separate process on the same database);
the client finds its URLs in /api/v1/openapi.json by operationId and talks
plain HTTP to the service on a loopback server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid

import requests
from sqlalchemy import func, select

from accident_service.cases.service import fingerprint_of
from accident_service.models import AuditEvent
from tests.e2e.conftest import stations  # noqa: F401  (the example stations with a week of slots)
from tests.support.flows import report_until_ready
from tests.support.live import drain

A, B = "oApiScenarioA000000000000001", "oApiScenarioB000000000000002"
CONFIRMED = "已由民警确认"  # what the confirmation notice says to a Chinese-reading driver


def create_token_with_the_cli(settings_overrides: dict) -> str:
    env = {**os.environ, **{key: str(value) for key, value in settings_overrides.items()}, "AUTO_MIGRATE": "false"}
    made = subprocess.run([sys.executable, "-c", "from accident_service.cli import main; main()",
                           "create-api-token", "--name", "insurer-pa", "--all", "--scope", "write"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


class DescribedClient:
    """Finds each operation's path in the OpenAPI description by operationId; sends the bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        spec = requests.get(f"{base_url}/api/v1/openapi.json", timeout=10).json()
        self.paths = {operation["operationId"]: (method.upper(), path)
                      for path, item in spec["paths"].items() for method, operation in item.items()
                      if isinstance(operation, dict) and "operationId" in operation}

    def call(self, operation_id: str, *, headers: dict | None = None, json: dict | None = None, **path_values):
        method, path = self.paths[operation_id]
        return self.session.request(method, self.base_url + path.format(**path_values), headers=headers,
                                    json=json, timeout=30)


def test_list_confirm_twice_with_one_key_and_file_the_dossier(wechat, live_app, wechat_runtime, stations,  # noqa: F811
                                                              wechat_settings_overrides):
    report_until_ready(wechat, wechat_runtime, A, B)
    wechat.post_text(B, "1")  # B made the case ready, so the slot list went to B
    drain(wechat_runtime)
    api = DescribedClient(live_app.url, create_token_with_the_cli(wechat_settings_overrides))

    listed = api.call("listCases")
    assert listed.status_code == 200
    case = next(c for c in listed.json()["items"] if c["status"] == "booked")

    key = str(uuid.uuid4())
    first = api.call("confirm", case_no=case["case_no"], headers={"Idempotency-Key": key},
                     json={"expected_version": case["version"]})
    again = api.call("confirm", case_no=case["case_no"], headers={"Idempotency-Key": key},
                     json={"expected_version": case["version"]})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and first.json()["status"] == "confirmed"
    assert again.headers["Idempotent-Replayed"] == "true"
    drain(wechat_runtime)
    for driver in (A, B):  # one notice each: one effect
        assert sum(CONFIRMED in message for message in wechat.messages_to(driver)) == 1
    with wechat_runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.action == "case.confirm")) == 1

    dossier = api.call("getDossier", case_no=case["case_no"])
    assert dossier.status_code == 200
    filed = dossier.json()
    assert len(filed["photos"]) == 4
    for photo in filed["photos"]:  # every photo's sha256 is that of the bytes behind its link
        assert hashlib.sha256(requests.get(photo["url"], timeout=10).content).hexdigest() == photo["sha256"]
    assert filed["fingerprint"] == fingerprint_of((p["item"], p["sha256"]) for p in filed["photos"])
    assert filed["fingerprint"] == filed["notified_fingerprint"]  # what both drivers were told at booking
    assert {p["role"]: p["plate"] for p in filed["parties"]} == {"A": "粤A12345", "B": "粤BD12345"}
    assert filed["appointment"]["status"] == "confirmed"
