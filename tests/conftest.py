"""Fixtures that start real things: a database, storage, the app.

Database: a temporary SQLite file per test by default; PostgreSQL when
TEST_DATABASE_URL is set (a database of its own for each pytest-xdist worker,
its schema migrated once with Alembic, every table truncated after each test,
so tests that commit from several connections stay isolated).
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)

from accident_service import create_app  # noqa: E402
from accident_service import models as _models  # noqa: E402,F401  (registers the tables)
from accident_service.clock import ControlledClock  # noqa: E402
from accident_service.db import Base, make_engine  # noqa: E402
from accident_service.runtime import build_runtime  # noqa: E402
from accident_service.sandbox.console import NOTICE_TEMPLATE_KEYWORDS  # noqa: E402
from accident_service.settings import load_settings  # noqa: E402
from tests.support.servers import MotoS3Server, no_hold_expired  # noqa: E402

BASE_POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "")
ON_POSTGRES = BASE_POSTGRES_URL.startswith("postgresql")
# The run's own database on the TEST_DATABASE_URL server, created in pytest_configure,
# so runs on one server (developers, helpers, CI) never see each other's rows.
POSTGRES_URL = ""
IN_CI = os.environ.get("CI", "").lower() == "true"
# A Wednesday, 10:00 in Guangzhou.
T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def pytest_configure(config):
    global POSTGRES_URL
    if ON_POSTGRES and not POSTGRES_URL and not _hands_tests_to_workers(config):
        POSTGRES_URL = _create_run_database(BASE_POSTGRES_URL)


def _hands_tests_to_workers(config) -> bool:
    """pytest-xdist's controller runs no test: each worker (a process of its own) makes its own database."""
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


def pytest_unconfigure(config):
    if ON_POSTGRES and POSTGRES_URL:
        _drop_database(POSTGRES_URL)


def _admin_engine(url: str):
    return make_engine(make_url(url).set(database="postgres").render_as_string(hide_password=False))


def _create_run_database(base_url: str) -> str:
    name = f"test_run_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(base_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str) -> None:
    admin = _admin_engine(url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def pytest_collection_modifyitems(config, items):
    if ON_POSTGRES:
        return
    pg_only = [item for item in items if item.get_closest_marker("postgres_only")]
    if pg_only:
        config.hook.pytest_deselected(items=pg_only)
        items[:] = [item for item in items if not item.get_closest_marker("postgres_only")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        # In CI a skip hides missing work: it fails the run instead.
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true forbids skips): {report.longrepr}"


@pytest.fixture(scope="session")
def _postgres_schema():
    if not ON_POSTGRES:
        yield None
        return
    from accident_service.schema import upgrade_database

    upgrade_database(POSTGRES_URL)
    engine = make_engine(POSTGRES_URL)
    yield engine
    engine.dispose()


@pytest.fixture
def database_url(tmp_path, _postgres_schema):
    if _postgres_schema is None:
        url = f"sqlite:///{tmp_path}/test.db"
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    yield POSTGRES_URL
    _background_notices_done()
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with _postgres_schema.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def clock():
    return ControlledClock(T0)


@pytest.fixture
def settings_overrides(tmp_path, database_url):
    """Override keys here (or extend in a test module) before `settings` is built."""
    return {
        "APP_ENV": "test",
        "DATA_DIR": str(tmp_path / "var"),
        "DATABASE_URL": database_url,
        "STORAGE_URL": f"file://{tmp_path}/objects",
        "AUTO_MIGRATE": False,
        "SECRET_KEY": "test-secret-key",
        "INBOX_PROCESS_INLINE": False,
        "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 0,  # the official sample messages were signed in 2014
        "WECHAT_API_BASE_URL": "http://127.0.0.1:9/cgi-bin/",  # unroutable unless a test sets the emulator
    }


@pytest.fixture
def settings(settings_overrides):
    return load_settings(settings_overrides, environ={})


@pytest.fixture
def runtime(settings, clock):
    rt = build_runtime(settings, clock=clock)
    yield rt
    rt.close()


def _background_notices_done() -> None:
    """What the test's changes sent in the background (notify.background, one thread) is done before its tables are
    emptied, whichever runtime it built: on PostgreSQL the TRUNCATE deadlocked with that thread's last write, and
    the next test read the rows left behind. The pool runs in order: a task submitted now runs after the others."""
    from accident_service.notify import background

    if background._pool is not None:
        background._pool.submit(lambda: None).result(timeout=60)


@pytest.fixture
def app(runtime):
    flask_app = create_app(runtime=runtime)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def moto_s3():
    server = MotoS3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket_name():
    return f"test-{uuid.uuid4().hex[:12]}"


WECHAT_APPID = "wx-test-app"
WECHAT_SECRET = "test-app-secret"
WECHAT_TOKEN = "test-token"
WECHAT_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


#: A deployment configures a template for each must-read notice (README, "Notices"): without one, a notice
#: a driver's WeChat allowance cannot carry waits for them (or goes by SMS, where configured).
NOTICE_TEMPLATES = {f"WECHAT_TEMPLATE_{kind.upper()}": f"tpl-{kind}" for kind in
                    ("booked", "rescheduled", "cancelled", "withdrawn", "confirmed", "retake", "reminder",
                     "completed")}


@pytest.fixture
def wechat(clock):
    """The WeChat platform emulator on loopback (API side and pushes), with the platform's rules on.

    It reads the test's clock: moving the service's time moves the platform's (allowance windows,
    token expiry, client_msg_id), as both would move together in production.
    """
    from accident_service.sandbox.emulator import WeChatEmulator

    emulator = WeChatEmulator(WECHAT_APPID, WECHAT_SECRET, WECHAT_TOKEN, WECHAT_AES_KEY,
                              encrypted_by_default=False, clock=lambda: clock.now().timestamp())
    for template_id in NOTICE_TEMPLATES.values():  # added in the console as README ("Notices") says
        emulator.register_template(template_id, NOTICE_TEMPLATE_KEYWORDS)
    emulator.start()
    yield emulator
    emulator.stop()
    no_hold_expired(emulator)


@pytest.fixture
def wechat_settings_overrides(settings_overrides, wechat):
    return {**settings_overrides, "WECHAT_APP_ID": WECHAT_APPID, "WECHAT_APP_SECRET": WECHAT_SECRET,
            "WECHAT_TOKEN": WECHAT_TOKEN, "WECHAT_ENCODING_AES_KEY": WECHAT_AES_KEY,
            "WECHAT_API_BASE_URL": wechat.api_base_url, **NOTICE_TEMPLATES,
            "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}  # the emulator signs as the platform does: now


@pytest.fixture
def wechat_runtime(wechat_settings_overrides, clock):
    rt = build_runtime(load_settings(wechat_settings_overrides, environ={}), clock=clock)
    yield rt
    rt.close()


@pytest.fixture
def live_app(wechat_runtime, wechat):
    """The app on a real HTTP server, wired to the emulator both ways."""
    from tests.support.live import LiveServer

    server = LiveServer(create_app(runtime=wechat_runtime)).start()
    wechat.callback_url = server.url + "/wechat"
    yield server
    server.stop()
