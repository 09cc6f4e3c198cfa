"""What operators read and run: the README's settings table, config/defaults.toml and docker-compose.yml.

No Docker engine runs here: the compose file is checked by reading it (YAML, service wiring, and
every variable it sets is a setting, read through load_settings as the containers would).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from accident_service.settings import SMS_TEMPLATE_PREFIX, TEMPLATE_PREFIX, Settings, load_settings
from tests.support import settings_table

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "scheduler")  # built from the Dockerfile
# Read by the processes but not settings: boto3's credentials, gunicorn's options (README, Configuration).
PROCESS_VARIABLES = {"BIND", "WEB_CONCURRENCY", "GUNICORN_THREADS", "PROMETHEUS_MULTIPROC_DIR",
                     "ACCIDENT_SERVICE_CONFIG_DIR"}
SETTINGS = set(Settings.model_fields) - {"templates", "sms_templates"}


def test_the_readme_table_is_written_from_the_defaults_file():
    assert settings_table.readme_table() == settings_table.table(), (
        "README.md's settings table differs from config/defaults.toml: run python -m tests.support.settings_table")


def test_every_setting_has_a_default_and_a_meaning():
    rows = {name: meaning for name, _default, meaning in settings_table.rows()}
    assert {name for name in rows if not name.startswith((TEMPLATE_PREFIX, SMS_TEMPLATE_PREFIX))} == SETTINGS
    assert [name for name, meaning in rows.items() if len(meaning) < 10] == []


def interpolate(value: object, environ: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} (the forms the file uses)."""
    def substitute(match: re.Match[str]) -> str:
        name, operator, rest = match["name"], match["operator"], match["rest"]
        if environ.get(name):
            return environ[name]
        if operator == ":?":
            raise KeyError(f"{name}: {rest}")
        return rest if operator == ":-" else ""

    return re.sub(r"\$\{(?P<name>\w+)(?:(?P<operator>:[-?])(?P<rest>[^}]*))?\}", substitute, str(value))


def app_environment(service: str, environ: dict[str, str]) -> dict[str, str]:
    return {name: interpolate(value, environ) for name, value in SERVICES[service]["environment"].items()}


OPERATOR = {"SECRET_KEY": "6a26b75ffc2f6e9e20f8f3332a7a63b4afafd4336493d20f0ce461074d8490ac",
            "WECHAT_APP_ID": "wx0123456789abcdef", "WECHAT_APP_SECRET": "an-app-secret", "WECHAT_TOKEN": "a-token",
            "METRICS_TOKEN": "9f1c2b7e4d6a8035"}


def test_compose_has_the_services_and_their_order():
    assert set(SERVICES) >= {"postgres", "minio", "minio-init", "redis", "migrate", "web", "scheduler"}
    assert SERVICES["postgres"]["image"].startswith("postgres:15")
    for name in ("minio", "minio-init"):  # a release of the evidence store, never whatever "latest" is that day
        assert ":RELEASE." in SERVICES[name]["image"], name
    assert SERVICES["migrate"]["command"] == ["accident-service", "db", "upgrade"]
    assert SERVICES["scheduler"]["command"] == ["accident-service", "scheduler"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Healthy only once PostgreSQL takes TCP connections, as migrate makes them: the image's first-run server (a
    # fresh volume) listens on its unix socket alone (docker-library/postgres#880; acceptance pass).
    assert "-h 127.0.0.1" in SERVICES["postgres"]["healthcheck"]["test"][1]
    for name in ("web", "scheduler"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # Every process counts the flood windows and sign-in failures, and shares the token, in the one Redis.
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert SERVICES[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert SERVICES[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "minio", "redis", "web", "scheduler"):  # the long-running ones
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in APP_SERVICES:
        assert SERVICES[name]["build"] == "." and (ROOT / "Dockerfile").is_file()


def test_the_build_context_keeps_what_the_image_copies_and_leaves_the_checkout_s_state_out():
    """Without .dockerignore the virtualenv (about 1 GB), the git history, var/ (a SQLite database, the development
    SECRET_KEY file) and the .env beside docker-compose.yml went to the daemon with every build (acceptance pass,
    review)."""
    import re

    patterns = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        """As Docker reads the patterns: from the context's root, or at any depth after "**/"; a directory's
        pattern covers what is under it."""
        parts = path.split("/")
        prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
        return any(matches(prefix.rsplit("/", 1)[-1], pattern.removeprefix("**/"))
                   if pattern.startswith("**/") else matches(prefix, pattern)
                   for pattern in patterns for prefix in prefixes)

    def matches(path: str, pattern: str) -> bool:  # Go's filepath.Match: "*" and "?" never cross a "/"
        return re.fullmatch("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                                    for c in pattern), path) is not None

    copied = [source for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1]]
    assert copied and not [source for source in copied if ignored(source)]
    assert all(ignored(path) for path in (".venv/bin/python", ".git/HEAD", "var/accident.db", "var/secret_key",
                                          ".env", "production.env", "config/prod.env", "config/.env"))


def test_the_scheduler_serves_its_metrics_on_a_port_it_exposes():
    """Its job runs and durations are scraped from the scheduler itself (the web's /metrics cannot see them)."""
    scheduler = SERVICES["scheduler"]
    port = int(scheduler["environment"]["SCHEDULER_METRICS_PORT"])
    assert port > 0 and str(port) in [str(exposed) for exposed in scheduler["expose"]]
    # Two schedulers, as production runs them: each in a container of its own, so no host port to share.
    assert scheduler["deploy"]["replicas"] == 2 and "ports" not in scheduler and "container_name" not in scheduler
    assert app_environment("scheduler", OPERATOR) == app_environment("web", OPERATOR) | {
        "SCHEDULER_METRICS_PORT": str(port)}


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_variable_compose_sets_is_a_setting(service):
    names = set(SERVICES[service]["environment"])
    unknown = {name for name in names - SETTINGS - PROCESS_VARIABLES if not name.startswith("AWS_")}
    assert unknown == set()
    assert {"DATABASE_URL", "STORAGE_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "SECRET_KEY"} <= names


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_compose_environment_loads_as_production_settings(service, tmp_path):
    environ = app_environment(service, OPERATOR) | {"DATA_DIR": str(tmp_path)}
    settings = load_settings(environ=environ)
    assert (settings.APP_ENV, settings.AUTO_MIGRATE, settings.METRICS_TOKEN) == ("production", False,
                                                                             OPERATOR["METRICS_TOKEN"])
    assert settings.DATABASE_URL.startswith("postgresql+psycopg://") and "@postgres:5432/" in settings.DATABASE_URL
    assert urlparse(settings.S3_ENDPOINT_URL).hostname == "minio"
    bucket = urlparse(settings.STORAGE_URL).netloc
    assert settings.storage_scheme == "s3" and f"store/{bucket}" in SERVICES["minio-init"]["command"][0]
    assert environ["AWS_ACCESS_KEY_ID"] == interpolate(SERVICES["minio"]["environment"]["MINIO_ROOT_USER"], {})


@pytest.mark.parametrize("name", ["SECRET_KEY", "METRICS_TOKEN"])
def test_compose_refuses_to_start_without_a_secret_key_or_a_metrics_token(name):
    """METRICS_TOKEN: the web's /metrics is on port 8000, published with the webhook (acceptance pass: left empty,
    it was public)."""
    with pytest.raises(KeyError, match=name):
        app_environment("web", {key: value for key, value in OPERATOR.items() if key != name})
