"""Health, readiness and metrics endpoints."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from accident_service import create_app
from accident_service.metrics import FAILURE_REASONS
from accident_service.notify.channels import SEND_SERIES
from accident_service.photos.checks import REJECTION_CODES
from accident_service.runtime import build_runtime
from accident_service.settings import SettingsError, load_settings
from tests.support.servers import MotoS3Server, free_port, serving


def test_healthz_and_readyz_ok(client):
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"


def test_metrics_exposed(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"accident_inbound_messages_total" in response.data


def test_metrics_with_a_token_set_answer_only_its_bearer(settings_overrides, clock):
    """The webhook must be public, and /metrics is on the same port: with METRICS_TOKEN the load balancer may pass it
    on, and only the scraper reads it."""
    token = "scrape-7f3a9c"
    runtime = build_runtime(load_settings({**settings_overrides, "METRICS_TOKEN": token}, environ={}), clock=clock)
    client = create_app(runtime=runtime).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                    {"Authorization": f"Bearer {token}x"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"accident_" not in refused.data
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and b"accident_inbound_messages_total" in scraped.data
    assert client.get("/readyz").status_code == 200  # the load balancer's checks need no token
    runtime.close()


@pytest.mark.parametrize("token", ["two words", " padded", "tab\there", "令牌"])
def test_a_metrics_token_a_header_cannot_carry_is_refused(settings_overrides, token):
    with pytest.raises(SettingsError, match="^METRICS_TOKEN: "):
        load_settings({**settings_overrides, "METRICS_TOKEN": token}, environ={})


def test_readyz_names_storage_when_s3_is_stopped(settings_overrides, clock):
    server = MotoS3Server()
    server.start()
    try:
        settings = load_settings({**settings_overrides, "STORAGE_URL": "s3://evidence",
                                  "S3_ENDPOINT_URL": server.url, "S3_CREATE_BUCKET": True}, environ={})
        runtime = build_runtime(settings, clock=clock)
        client = create_app(runtime=runtime).test_client()
        assert client.get("/readyz").status_code == 200
        server.stop()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "storage" in response.json["failing"]
        assert "database" not in response.json["failing"]
        # Public: the error's type, not its text, which names the store's endpoint (operator acceptance pass).
        assert response.json["failing"]["storage"] == "StorageUnavailable"
        assert "127.0.0.1" not in response.get_data(as_text=True) and "evidence" not in response.get_data(as_text=True)
        runtime.close()
    finally:
        server.stop()


class SilentServer:
    """A loopback TCP server that accepts connections and never answers (a wedged S3 endpoint)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop notices stop()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(connection)  # kept open, never read, never answered

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        for connection in self._held:
            connection.close()
        self._listener.close()


def test_readyz_answers_quickly_when_s3_accepts_but_never_answers(settings_overrides, clock):
    """Concurrent probes each give up on the silent store within seconds (no 10 s read timeout, no retries)."""
    with SilentServer() as silent:
        settings = load_settings({**settings_overrides, "STORAGE_URL": "s3://evidence",
                                  "S3_ENDPOINT_URL": silent.url}, environ={})
        runtime = build_runtime(settings, clock=clock)
        app = create_app(runtime=runtime)
        responses = []

        def probe() -> None:
            responses.append(app.test_client().get("/readyz"))

        try:
            started = time.monotonic()
            probes = [threading.Thread(target=probe, daemon=True) for _ in range(4)]
            for thread in probes:
                thread.start()
            for thread in probes:
                thread.join(timeout=max(0.0, started + 8 - time.monotonic()))
            elapsed = time.monotonic() - started
            assert not any(thread.is_alive() for thread in probes), f"/readyz still waiting after {elapsed:.1f} s"
        finally:
            runtime.close()
    assert [response.status_code for response in responses] == [503] * 4
    for response in responses:
        assert list(response.json["failing"]) == ["storage"]


def test_readyz_names_database_when_unreachable(settings_overrides, clock):
    from tests.support.servers import free_port

    settings = load_settings({**settings_overrides,
                              "DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"},
                             environ={})
    runtime = build_runtime(settings, clock=clock)
    response = create_app(runtime=runtime).test_client().get("/readyz")
    assert response.status_code == 503
    assert list(response.json["failing"]) == ["database"]
    runtime.close()


def _sample(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_metrics_add_up_every_gunicorn_worker_and_show_queue_depths(tmp_path):
    """`accident-service serve` (the production gunicorn config) with two workers: /metrics
    counts every push whichever worker took it, and the inbox depth comes from the database."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/ops.db", "STORAGE_URL": f"file://{tmp_path}/objects",
           "DATA_DIR": str(tmp_path / "var"), "WECHAT_TOKEN": "ops-token", "INBOX_PROCESS_INLINE": "false",
           "SECRET_KEY": "x", "APP_ENV": "test", "LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with serving([str(Path(sys.executable).with_name("accident-service")), "serve", "--bind", f"127.0.0.1:{port}",
                  "--workers", "2"], env=env, port=port, log_path=tmp_path / "serve.log") as url:
        pushes = 24
        for msg_id in range(1, pushes + 1):
            timestamp, nonce = str(int(time.time())), str(msg_id)
            signature = hashlib.sha1("".join(sorted(["ops-token", timestamp, nonce])).encode()).hexdigest()
            body = (f"<xml><ToUserName>gh_ops</ToUserName><FromUserName>oOps{msg_id}</FromUserName>"
                    f"<CreateTime>{timestamp}</CreateTime><MsgType>text</MsgType><Content>hi</Content>"
                    f"<MsgId>{msg_id}</MsgId></xml>")
            response = requests.post(url + "/wechat", params={"signature": signature, "timestamp": timestamp,
                                                              "nonce": nonce}, data=body.encode(), timeout=10,
                                     headers={"Connection": "close"})  # a new connection each: both workers serve
            assert response.text == "success"
        for _ in range(6):  # each scrape lands on either worker
            text = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"}).text
            assert _sample(text, "accident_inbound_messages_total", 'outcome="stored"') == pushes
            assert _sample(text, "accident_inbox_messages", 'status="pending"') == pushes
            assert _sample(text, "accident_inbox_messages", 'status="failed"') == 0
            # Before any failure, every series of one is there at 0: an alert can see the first.
            for queue, reasons in FAILURE_REASONS.items():
                for reason in reasons:
                    assert f'accident_failures_total{{queue="{queue}",reason="{reason}"}} 0.0' in text
            # So are the photos, refused for each reason the checks know, before the first photo.
            assert "too_blurry" in REJECTION_CODES and "evidence_locked" in REJECTION_CODES
            for reason in REJECTION_CODES:
                assert f'accident_photos_total{{outcome="rejected",reason="{reason}"}} 0.0' in text
            assert 'accident_photos_total{outcome="accepted",reason=""} 0.0' in text
            for action in ("booked", "rescheduled", "cancelled"):  # and the bookings, before the first
                assert f'accident_bookings_total{{action="{action}"}} 0.0' in text
            # And the sends, sent and failed, for each channel a notice may take and the replies' one.
            assert {("wechat", "reply"), ("template", "booked"), ("sms", "booked")} <= set(SEND_SERIES)
            for channel, kind in SEND_SERIES:
                for result in ("sent", "failed"):
                    assert f'accident_sends_total{{channel="{channel}",kind="{kind}",result="{result}"}} 0.0' in text
