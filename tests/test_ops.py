"""Health, readiness and metrics endpoints."""

from __future__ import annotations

from accident_service import create_app
from accident_service.runtime import build_runtime
from accident_service.settings import load_settings
from tests.support.servers import MotoS3Server


def test_healthz_and_readyz_ok(client):
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"


def test_metrics_exposed(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"accident_inbound_messages_total" in response.data


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
        runtime.close()
    finally:
        server.stop()


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
