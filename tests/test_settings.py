"""Settings: defaults, environment overrides, errors that name the variable."""

from __future__ import annotations

import re
import secrets

import pytest

from accident_service import create_app
from accident_service.settings import CONFIG_DIR, Settings, SettingsError, load_settings, number_ranges

# A production key as the error message tells operators to make one (secrets.token_hex(32)).
STRONG_KEY = "6a26b75ffc2f6e9e20f8f3332a7a63b4afafd4336493d20f0ce461074d8490ac"
#: What production runs on (DATABASE_URL must be set there): the tests below load settings only, never connect.
PRODUCTION_DATABASE = "postgresql+psycopg://accident@db.internal/accident"


def test_defaults_are_embedded(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)}, environ={})
    assert settings.DATABASE_URL == f"sqlite:///{tmp_path}/accident.db"
    assert settings.STORAGE_URL == f"file://{tmp_path}/objects"
    assert settings.SECRET_KEY  # generated and kept for development
    assert load_settings({"DATA_DIR": str(tmp_path)}, environ={}).SECRET_KEY == settings.SECRET_KEY


def test_environment_overrides_defaults(tmp_path):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path), "PHOTO_MIN_SHORT_SIDE": "1000",
                                      "WECHAT_TEMPLATE_BOOKED": "tpl-1", "UNRELATED": "x"})
    assert settings.PHOTO_MIN_SHORT_SIDE == 1000
    assert settings.template_for("booked") == "tpl-1"
    assert settings.template_for("reminder") is None


@pytest.mark.parametrize("name,value", [
    ("DATABASE_URL", "not a url"),
    ("DATABASE_URL", "mysql://x@localhost/db"),
    # No host or no database: the driver would pick the local socket and a database named after the user.
    ("DATABASE_URL", "postgresql://postgres@"),
    ("DATABASE_URL", "postgresql://postgres@/accident"),
    ("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"),
    ("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/"),
    ("DATABASE_URL", "sqlite://"),
    ("DATABASE_URL", "sqlite:///:memory:"),
    ("DATABASE_URL", "sqlite:///file::memory:?uri=true"),
    ("DATABASE_URL", "sqlite:///file:evidence?mode=memory&cache=shared&uri=true"),
    ("STORAGE_URL", "ftp://bucket"),
    ("STORAGE_URL", "s3://"),
    ("PHOTO_MIN_SHORT_SIDE", "big"),
    ("AUTO_MIGRATE", "maybe"),
    ("WECHAT_ENCODING_AES_KEY", "short"),
    ("WECHAT_API_BASE_URL", "http://127.0.0.1/cgi-bin"),
    ("LOG_LEVEL", "VERBOSE"),
    ("LOG_LEVEL", ""),
    ("S3_ENDPOINT_URL", "notaurl"),
    ("S3_ENDPOINT_URL", "minio:9000"),
    ("S3_ENDPOINT_URL", "http://minio:port"),
    ("S3_ENDPOINT_URL", "ftp://minio:9000"),
    ("REDIS_URL", "garbage"),
    ("REDIS_URL", "redis://"),
    ("REDIS_URL", "redis://cache:63790000/0"),
    ("REDIS_URL", "redis://cache:6379/zero"),
    ("REDIS_URL", "unix://"),
    # 43 characters, but URL-safe base64 ('-', '_'): WeChat's key decodes with the standard alphabet.
    ("WECHAT_ENCODING_AES_KEY", "abcdefghijklmnopqrstuvwxyz0123456789-_ABCDE"),
    ("WECHAT_ENCODING_AES_KEY", "abcdefghijklmnopqrstuvwxyz 123456789ABCDEFG"),
    ("PHOTO_MAX_PIXELS", "100000000"),
    ("PHOTO_MAX_PIXELS", "0"),
    ("PHOTO_MAX_BYTES", "-5"),
    ("INBOX_LEASE_SECONDS", "0"),
    ("INBOX_MAX_ATTEMPTS", "0"),
    ("OUTBOX_MAX_ATTEMPTS", "-1"),
    ("WECHAT_MAX_BODY_BYTES", "0"),
    ("WECHAT_API_TIMEOUT_SECONDS", "0"),
    ("WECHAT_API_TIMEOUT_SECONDS", "nan"),
    ("BOOKING_OFFER_COUNT", "0"),
    ("BOOKING_OFFER_COUNT", "10"),
    ("WECHAT_TIMESTAMP_TOLERANCE_SECONDS", "-1"),
    ("NO_SHOW_GRACE_MINUTES", "-1"),
    ("PRESIGNED_URL_SECONDS", "0"),
    ("PRESIGNED_URL_SECONDS", str(8 * 24 * 3600)),
    ("JOIN_QR_EXPIRE_SECONDS", str(31 * 24 * 3600)),
    ("PHOTO_MIN_SHORT_SIDE", "10000"),  # 10000² pixels is above PHOTO_MAX_PIXELS: no photo could pass
    ("WECHAT_API_BASE_URL", "notaurl/"),
    ("WECHAT_API_BASE_URL", "https:///cgi-bin/"),
    ("STORAGE_URL", "file://"),
    ("STORAGE_URL", "file://localhost"),
    ("WECHAT_TOKEN", ""),
    ("WECHAT_TOKEN", "  "),
    # Only the drivers the service installs (sqlite, psycopg 3): others fail later with ModuleNotFoundError.
    ("DATABASE_URL", "postgresql+asyncpg://u@127.0.0.1/db"),
    ("DATABASE_URL", "postgresql+psycopg2://u@127.0.0.1/db"),
    ("DATABASE_URL", "postgresql+psycopg_async://u@127.0.0.1/db"),
    ("DATABASE_URL", "sqlite+aiosqlite:///x.db"),
    ("S3_REGION", "bad region"),
    ("S3_REGION", ""),
    ("S3_REGION", "-us-east-1"),
    ("S3_REGION", "12345"),
    ("S3_REGION", "x" * 64),
    ("SECRET_KEY", " "),
    ("SECRET_KEY", "\t\n"),
    # No typo with extra digits may reach a job that overflows a date every run.
    ("SLOT_GENERATION_DAYS", "99999999999999999999"),
    ("SLOT_GENERATION_DAYS", "367"),
    ("BOOKING_SEARCH_DAYS", "367"),
    ("REMINDER_MINUTES", "99999999999999999999"),
    ("REMINDER_MINUTES", str(7 * 24 * 60 + 1)),
    ("DRAFT_EXPIRY_MINUTES", str(7 * 24 * 60 + 1)),
    ("NO_SHOW_GRACE_MINUTES", str(7 * 24 * 60 + 1)),
    ("BOOKING_LEAD_MINUTES", str(7 * 24 * 60 + 1)),
    ("PHOTO_MAX_CAPTURE_AGE_MINUTES", str(7 * 24 * 60 + 1)),
    ("INBOX_LEASE_SECONDS", "99999999999999999999"),
    ("INBOX_LEASE_SECONDS", "86401"),
    ("WECHAT_TIMESTAMP_TOLERANCE_SECONDS", "86401"),
    ("WECHAT_API_TIMEOUT_SECONDS", "301"),
    ("WECHAT_API_TIMEOUT_SECONDS", "inf"),
    ("INBOX_MAX_ATTEMPTS", "31"),
    ("OUTBOX_MAX_ATTEMPTS", "1000"),
    ("PHOTO_MAX_BYTES", str(201 * 2**20)),
    ("WECHAT_MAX_BODY_BYTES", str(17 * 2**20)),
    ("BOOKING_NEAREST_STATIONS", "101"),
    ("PHOTO_MIN_SHORT_SIDE", "20001"),
    ("LOG_FORMAT", "xml"),
    # Written as Python's int() and float() read them, not as numbers are written: "3_0" was 30, "3.0" a whole 3.
    ("BOOKING_OFFER_COUNT", "3.0"),
    ("BOOKING_OFFER_COUNT", "3_0"),
    ("RETENTION_DAYS", "1_80"),
    ("WECHAT_API_TIMEOUT_SECONDS", "2_0"),
    ("INBOX_MAX_ATTEMPTS", "５"),  # a full-width digit
    ("RETENTION_DAYS", "0"),
    ("RETENTION_DAYS", "3651"),
    ("PHOTO_MAX_PIXELS", "9" * 500),  # too big for a float: still a named error, not an OverflowError
])
def test_malformed_setting_names_the_variable(tmp_path, name, value):
    with pytest.raises(SettingsError) as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), name: value})
    assert str(excinfo.value).startswith(name)


def test_a_database_url_refused_does_not_show_its_password(tmp_path):
    with pytest.raises(SettingsError, match="^DATABASE_URL: no database") as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://app:s3cret-pw@db:5432"})
    assert "s3cret-pw" not in str(excinfo.value)


@pytest.mark.parametrize(("name", "value"), [
    ("REDIS_URL", "http://:s3cret-pw@cache"), ("REDIS_URL", "redis://app:s3cret-pw@cache:notaport/0"),
    ("REDIS_URL", "redis://:s3cret-pw@/0"), ("REDIS_URL", "unix://:s3cret-pw@"),
    ("REDIS_URL", "redis://app:s3c@ret-pw@cache:x/0"),
    # Unescaped '/', '?', '#' in the password end urlparse's host part early; no '//' at all.
    ("REDIS_URL", "redis://app:s3c/ret@cache/12"), ("REDIS_URL", "redis://app:s3c?ret@cache"),
    ("REDIS_URL", "redis:app:s3cret@cache"), ("REDIS_URL", "app:s3cret@cache:6379"),
    ("REDIS_URL", "redis://app:6379/s3cret@cache/0"),  # a valid "port" first: the rest lands in the path
    ("S3_ENDPOINT_URL", "http://key:s3cret@minio:9000/path"), ("S3_ENDPOINT_URL", "http://key:s3c/ret@minio:x"),
])
def test_a_url_refused_does_not_show_its_password(tmp_path, name, value):
    with pytest.raises(SettingsError, match=f"^{name}: ") as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), name: value})
    assert "s3c" not in str(excinfo.value) and ":***@" in str(excinfo.value)


def _left_blank_is_refused() -> list[str]:
    """The settings the README says are refused when left blank: not a flag, a default that is not "(empty)", and
    a meaning that does not say what empty means (written from config/defaults.toml, like the README's table)."""
    from tests.support.settings_table import rows

    return [name for name, default, meaning in rows()
            if default not in {"(empty)", "`true`", "`false`"} and not re.search(r"(?<!never )\bempty\b", meaning)]


@pytest.mark.parametrize("name", _left_blank_is_refused())
def test_a_setting_with_a_default_left_blank_is_refused_naming_it(tmp_path, name):
    """README, Configuration: a blank in an env file is a mistake, not a request for the default or for nothing
    (acceptance pass: SMS_REGION and SMS_ENDPOINT_URL were taken blank)."""
    with pytest.raises(SettingsError, match=f"^{name}: "):
        load_settings(environ={"DATA_DIR": str(tmp_path), name: ""})


@pytest.mark.parametrize("app_env", ["development", "test", "production"])
def test_an_empty_wechat_token_is_refused_in_every_environment(tmp_path, app_env):
    """A GET signed with an empty token is a signature anybody can compute; it must never be echoed."""
    with pytest.raises(SettingsError, match="^WECHAT_TOKEN"):
        load_settings({"DATA_DIR": str(tmp_path), "APP_ENV": app_env, "WECHAT_TOKEN": "",
                       "DATABASE_URL": PRODUCTION_DATABASE, "SECRET_KEY": STRONG_KEY, "WECHAT_APP_ID": "wx1234",
                       "WECHAT_APP_SECRET": "real"},
                      environ={})


@pytest.mark.parametrize("name,value,expected", [
    ("LOG_LEVEL", "debug", "DEBUG"),
    ("LOG_LEVEL", " Warning ", "WARNING"),
    ("S3_ENDPOINT_URL", "http://minio:9000", "http://minio:9000"),
    ("S3_ENDPOINT_URL", "https://s3.example.com/", "https://s3.example.com/"),
    ("REDIS_URL", "redis://:secret@cache:6379/2", "redis://:secret@cache:6379/2"),
    ("REDIS_URL", "rediss://cache", "rediss://cache"),
    ("REDIS_URL", "unix:///run/redis.sock", "unix:///run/redis.sock"),
    ("WECHAT_ENCODING_AES_KEY", "abcdefghijklmnopqrstuvwxyz0123456789+/ABCDE",
     "abcdefghijklmnopqrstuvwxyz0123456789+/ABCDE"),
    ("PHOTO_MAX_PIXELS", "89478485", 89478485),
    ("WECHAT_TIMESTAMP_TOLERANCE_SECONDS", "0", 0),  # documented: 0 turns the check off
    ("BOOKING_OFFER_COUNT", "9", 9),
    ("DATABASE_URL", "postgresql://app@/accident?host=/var/run/postgresql",  # a local socket, named
     "postgresql://app@/accident?host=/var/run/postgresql"),
    ("DATABASE_URL", "postgresql+psycopg://app:pw@db:5432/accident", "postgresql+psycopg://app:pw@db:5432/accident"),
    ("DATABASE_URL", "postgresql://app@/accident?hostaddr=10.0.0.5", "postgresql://app@/accident?hostaddr=10.0.0.5"),
    ("DATABASE_URL", "postgresql:///?service=prod", "postgresql:///?service=prod"),
    ("DATABASE_URL", "postgresql://app@db/?dbname=accident", "postgresql://app@db/?dbname=accident"),
    ("BOOKING_LEAD_MINUTES", "0", 0),
    ("NO_SHOW_GRACE_MINUTES", "0", 0),
    ("WECHAT_API_TIMEOUT_SECONDS", "0.5", 0.5),
    ("WECHAT_API_TIMEOUT_SECONDS", "1e1", 10.0),  # a decimal may have an exponent
    ("WECHAT_API_TIMEOUT_SECONDS", " 7 ", 7.0),
    ("BOOKING_OFFER_COUNT", " +3 ", 3),
    ("STORAGE_URL", "file://./var/objects", "file://./var/objects"),
    ("STORAGE_URL", "file:///srv/evidence", "file:///srv/evidence"),
    ("DATABASE_URL", "postgresql://u@127.0.0.1/db", "postgresql://u@127.0.0.1/db"),  # psycopg 3 in SQLAlchemy 2.1
    ("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"),
    ("DATABASE_URL", "sqlite+pysqlite:///x.db", "sqlite+pysqlite:///x.db"),
    # A file named in SQLite's URI form is a file all the same.
    ("DATABASE_URL", "sqlite:///file:x.db?uri=true&mode=rwc", "sqlite:///file:x.db?uri=true&mode=rwc"),
    ("S3_REGION", "us-east-1", "us-east-1"),
    ("S3_REGION", "cn-north-1", "cn-north-1"),
    ("S3_REGION", "ap-southeast-2", "ap-southeast-2"),
    ("S3_REGION", "us-gov-west-1", "us-gov-west-1"),
    ("S3_REGION", "garage", "garage"),  # S3-compatible servers name their own regions; botocore accepts them
    ("SLOT_GENERATION_DAYS", "366", 366),
    ("REMINDER_MINUTES", str(7 * 24 * 60), 7 * 24 * 60),
    ("INBOX_LEASE_SECONDS", "86400", 86400),
    ("INBOX_MAX_ATTEMPTS", "30", 30),
    ("PHOTO_MAX_BYTES", str(200 * 2**20), 200 * 2**20),
    ("LOG_FORMAT", " JSON ", "json"),
    ("APP_ENV", "Test", "test"),  # any case, as LOG_FORMAT (acceptance pass: APP_ENV=PRODUCTION was refused)
    ("RETENTION_DAYS", "30", 30),
    ("AUTO_MIGRATE", "", False),  # blank is false, as in an env file's "AUTO_MIGRATE="
    ("AUTO_MIGRATE", "yes", True),
    ("PHOTO_CHECKLIST", " scene , plate_a,plate_b ", ("scene", "plate_a", "plate_b")),
    ("PHOTO_CHECKLIST", "scene,plate_a,plate_b,", ("scene", "plate_a", "plate_b")),  # a trailing comma
    # Spaces around a URL or a name are dropped as around a number (review: a bucket "evidence ", a database file
    # "x.db ", a Redis URL whose database "is not a number", an S3 endpoint with a "bad port").
    ("STORAGE_URL", " s3://evidence ", "s3://evidence"),
    ("DATABASE_URL", "sqlite:////srv/x.db ", "sqlite:////srv/x.db"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0 ", "redis://127.0.0.1:6379/0"),
    ("S3_ENDPOINT_URL", "http://127.0.0.1:9000\n", "http://127.0.0.1:9000"),
    ("WECHAT_TOKEN", " push-token ", "push-token"),
])
def test_well_formed_values_are_accepted(tmp_path, name, value, expected):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path), name: value})
    assert getattr(settings, name) == expected


def test_a_database_url_whose_port_is_not_a_number_says_what_is_expected(tmp_path):
    with pytest.raises(SettingsError, match=r"^DATABASE_URL: its port is not a number; use postgresql://"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://u@db:notaport/x"})


@pytest.mark.parametrize(("value", "message"), [("scene,,plate_a,plate_b", "item 2 is empty"),
                                              ("scene,scene,plate_a,plate_b", "scene given more than once")])
def test_a_checklist_with_an_empty_or_repeated_item_is_named(tmp_path, value, message):
    """Dropped or kept, either would shift which photo each number asks for (acceptance pass: an empty item was
    dropped, and the error then blamed PHOTO_CHECKLIST_B)."""
    with pytest.raises(SettingsError, match=f"^PHOTO_CHECKLIST: {message}"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "PHOTO_CHECKLIST": value})


def test_a_checklist_item_no_message_can_name_is_refused(tmp_path):
    """Each item is named to the drivers and the desk by its catalogue text: "dashcam" was accepted, and the first
    message that asked for it raised KeyError."""
    with pytest.raises(SettingsError, match="^PHOTO_CHECKLIST: dashcam: no such photo item; the items are collision, "
                                            "plate_a, plate_b, scene"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "PHOTO_CHECKLIST": "scene,dashcam,plate_b"})
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "PHOTO_CHECKLIST": "plate_b,scene"}).PHOTO_CHECKLIST \
        == ("plate_b", "scene")


def test_every_numeric_setting_has_a_range():
    """A new numeric setting needs a bound in number_ranges(), or 0 and negatives slip through."""
    numeric = {name for name, field in Settings.model_fields.items() if field.annotation in (int, float)}
    assert numeric == set(number_ranges())


def test_every_numeric_setting_has_an_upper_bound():
    """Without one, 99999999999999999999 days or minutes overflows a datetime in a job, every run."""
    assert [name for name, accepted in number_ranges().items() if accepted.maximum is None] == []


def test_every_default_is_inside_its_range(tmp_path):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path)})
    for name, accepted in number_ranges().items():
        assert not accepted.refuses(getattr(settings, name)), name


def test_a_timeout_range_says_both_bounds(tmp_path):
    with pytest.raises(SettingsError, match=r"^WECHAT_API_TIMEOUT_SECONDS: must be more than 0 and at most 300"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "WECHAT_API_TIMEOUT_SECONDS": "301"})


@pytest.mark.parametrize("value", ["/etc/passwd/x", "", "   ", "a\x00b", "x" * 5000])
def test_an_unusable_data_dir_is_a_named_error(tmp_path, monkeypatch, value):
    """A file on the way, an empty value (the filesystem root), a NUL or an over-long name: never a traceback."""
    monkeypatch.chdir(tmp_path)  # nothing is created in the checkout, whatever happens
    with pytest.raises(SettingsError, match="^DATA_DIR: "):
        load_settings(environ={"DATA_DIR": value})


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SettingsError, match="^DATA_DIR: .*not a directory"):
        load_settings(environ={"DATA_DIR": str(a_file)})
    with pytest.raises(SettingsError, match="^DATA_DIR: .*Not a directory"):
        load_settings(environ={"DATA_DIR": str(a_file / "below")})


def test_a_data_dir_that_cannot_be_created_gives_the_os_reason(tmp_path):
    # A name longer than any filesystem allows fails for every user, root included.
    with pytest.raises(SettingsError, match="^DATA_DIR: .*File name too long"):
        load_settings(environ={"DATA_DIR": str(tmp_path / ("x" * 300))})


def test_a_refused_setting_leaves_no_data_dir_behind(tmp_path):
    with pytest.raises(SettingsError, match="^BOOKING_OFFER_COUNT"):
        load_settings(environ={"DATA_DIR": str(tmp_path / "new"), "BOOKING_OFFER_COUNT": "ten"})
    assert not (tmp_path / "new").exists()


def test_a_missing_data_dir_is_created(tmp_path):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path / "a" / "b"), "SECRET_KEY": "real"})
    assert (tmp_path / "a" / "b").is_dir()
    assert settings.DATABASE_URL == f"sqlite:///{tmp_path}/a/b/accident.db"


def test_an_unreadable_development_secret_is_a_named_error(tmp_path):
    (tmp_path / "secret_key").mkdir()  # a directory where the key file should be
    with pytest.raises(SettingsError, match="^DATA_DIR: cannot keep the development secret key"):
        load_settings(environ={"DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize("name", ["SECRET_KEY", "WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN"])
@pytest.mark.parametrize("blank", [" ", "\t \n"])
def test_production_refuses_blank_secrets(tmp_path, name, blank):
    real = {"SECRET_KEY": STRONG_KEY, "WECHAT_APP_ID": "wx1234", "WECHAT_APP_SECRET": "real", "WECHAT_TOKEN": "tok",
            "DATABASE_URL": PRODUCTION_DATABASE}
    with pytest.raises(SettingsError, match=f"^{name}: "):
        load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "production", **real, name: blank})


AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789+/ABCDE"


@pytest.mark.parametrize("app_id", ["", "  "])
def test_an_aes_key_needs_an_app_id(tmp_path, app_id):
    """Encrypted pushes are checked against the AppID: without one, every one of them would fail."""
    with pytest.raises(SettingsError, match="^WECHAT_APP_ID: required when WECHAT_ENCODING_AES_KEY is set"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "WECHAT_ENCODING_AES_KEY": AES_KEY, "WECHAT_APP_ID": app_id})


def test_plain_mode_needs_no_app_id(tmp_path):
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "WECHAT_APP_ID": ""}).WECHAT_APP_ID == ""


@pytest.mark.parametrize("environ,blamed", [
    ({"PHOTO_MAX_PIXELS": "1000"}, "PHOTO_MAX_PIXELS"),  # the one changed is the one named
    ({"PHOTO_MIN_SHORT_SIDE": "10000"}, "PHOTO_MIN_SHORT_SIDE"),
    ({"PHOTO_MAX_PIXELS": "1000", "PHOTO_MIN_SHORT_SIDE": "720"}, "PHOTO_MIN_SHORT_SIDE"),
])
def test_photo_size_cross_check_names_the_setting_changed(tmp_path, environ, blamed):
    with pytest.raises(SettingsError) as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), **environ})
    message = str(excinfo.value)
    assert message.startswith(f"{blamed}: ")
    assert "PHOTO_MAX_PIXELS" in message and "PHOTO_MIN_SHORT_SIDE" in message


def test_photo_size_cross_check_blames_an_override_too(tmp_path):
    with pytest.raises(SettingsError, match="^PHOTO_MAX_PIXELS: "):
        load_settings({"DATA_DIR": str(tmp_path), "PHOTO_MAX_PIXELS": 1000}, environ={})


def test_the_test_suites_settings_load(settings):
    """tests/conftest.py's overrides satisfy the checks every other test relies on."""
    assert settings.APP_ENV == "test"


@pytest.mark.parametrize("production", ["production", "PRODUCTION", " Production"])
def test_production_refuses_development_secrets(tmp_path, production):
    with pytest.raises(SettingsError, match="SECRET_KEY|WECHAT"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": production,
                               "DATABASE_URL": PRODUCTION_DATABASE})


def test_production_does_not_fall_back_on_the_embedded_sqlite_file(tmp_path):
    """The image sets APP_ENV=production and a DATA_DIR inside its container: without DATABASE_URL every instance
    kept its cases in a file of its own, gone with the container."""
    secrets_set = {"SECRET_KEY": STRONG_KEY, "WECHAT_APP_ID": "wx1234", "WECHAT_APP_SECRET": "real",
                   "WECHAT_TOKEN": "tok"}
    with pytest.raises(SettingsError, match="^DATABASE_URL: must be set when APP_ENV=production: .* PostgreSQL"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "production", **secrets_set})
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "production", **secrets_set,
                                  "DATABASE_URL": PRODUCTION_DATABASE}).DATABASE_URL == PRODUCTION_DATABASE
    chosen = f"sqlite:///{tmp_path}/one-machine.db"  # set on purpose: one machine, its file kept
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "production", **secrets_set,
                                  "DATABASE_URL": chosen}).DATABASE_URL == chosen
    assert load_settings(environ={"DATA_DIR": str(tmp_path)}).DATABASE_URL.startswith("sqlite:///")


def test_unreachable_database_at_startup_is_an_outage_not_a_setting_to_change(tmp_path):
    """The driver's error as it is, which the CLI tells as "try again shortly" (exit 1): DATABASE_URL may be right."""
    from sqlalchemy.exc import OperationalError

    from accident_service.db import may_succeed_later
    from tests.support.servers import free_port

    with pytest.raises(OperationalError) as excinfo:
        create_app({"DATA_DIR": str(tmp_path), "AUTO_MIGRATE": True,
                    "DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
    assert may_succeed_later(excinfo.value)


PRODUCTION = {"APP_ENV": "production", "WECHAT_APP_ID": "wx1234", "WECHAT_APP_SECRET": "real", "WECHAT_TOKEN": "tok",
              "DATABASE_URL": PRODUCTION_DATABASE}


@pytest.mark.parametrize("key", [
    "x", "changeme", "secret", "CHANGEME", "test-secret-key",
    "dev-" + "0123456789abcdef" * 3,  # the development defaults' prefix
    "9f86d081884c7d659a2feaa0c55ad01",  # random, but 31 characters
    "a" * 64, "ab" * 32, "0123456789" * 4,  # repeated characters
    "abcdefghijklmnopqrstuvwxyz0123456789",  # a sequence
    "ThisIsMyVerySecretProductionKey2026!",  # words
    "mysupersecretproductionkeyfortheservice",
    # Phrases zxcvbn scores above its bar: mostly words (acceptance pass).
    "my-super-secret-key-for-the-prod", "ThisIsMyVerySecretKeyForProduction2024",
    "thequickbrownfoxjumpsoverthelazydog", "gz-traffic-police-accident-self-report-prod-key",
    "deadbeefcafebabefacadedecade0123abbaface",  # words of hex letters
])
def test_production_refuses_weak_secret_keys(tmp_path, key):
    with pytest.raises(SettingsError, match="^SECRET_KEY: ") as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), **PRODUCTION, "SECRET_KEY": key})
    assert 'python -c "import secrets; print(secrets.token_hex(32))"' in str(excinfo.value)


@pytest.mark.parametrize("pasted", [" {key}", "{key}\n", "{key} "])
def test_production_refuses_a_key_pasted_with_spaces_around_it(tmp_path, pasted):
    """The key in use would not be the one written down (acceptance pass: a trailing space passed)."""
    with pytest.raises(SettingsError, match="^SECRET_KEY: has spaces or a line break around it"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **PRODUCTION,
                               "SECRET_KEY": pasted.format(key=secrets.token_hex(32))})


@pytest.mark.parametrize("url", ["http://api.weixin.qq.com/cgi-bin/", "http://127.0.0.1:8080/cgi-bin/"])
def test_production_calls_the_platform_over_tls_only(tmp_path, url):
    """Every call carries the access token in its query (acceptance pass: http:// was accepted in production)."""
    with pytest.raises(SettingsError, match="^WECHAT_API_BASE_URL: must be https:// when APP_ENV=production"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **PRODUCTION, "SECRET_KEY": secrets.token_hex(32),
                               "WECHAT_API_BASE_URL": url})
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "WECHAT_API_BASE_URL": url}).WECHAT_API_BASE_URL == url


SMS_FOUR = {"SMS_SDK_APP_ID": "1400000000", "SMS_SECRET_ID": "AKIDexample", "SMS_SECRET_KEY": "a-secret-key",
            "SMS_SIGN_NAME": "交警快处"}


@pytest.mark.parametrize("given", [("SMS_SDK_APP_ID",), ("SMS_SECRET_ID", "SMS_SECRET_KEY"),
                                   ("SMS_SDK_APP_ID", "SMS_SECRET_ID", "SMS_SIGN_NAME")])
def test_sms_half_configured_is_refused_naming_what_is_missing(tmp_path, given):
    """Half of it set left SMS off without a word, and must-read notices no text could carry waiting (acceptance
    pass)."""
    missing = [name for name in SMS_FOUR if name not in given][0]
    with pytest.raises(SettingsError, match=f"^{missing}: empty while {given[0]}"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **{name: SMS_FOUR[name] for name in given}})
    assert load_settings(environ={"DATA_DIR": str(tmp_path), **SMS_FOUR}).sms_enabled
    assert not load_settings(environ={"DATA_DIR": str(tmp_path)}).sms_enabled


def test_an_sms_template_while_sms_is_off_is_refused(tmp_path):
    """The operator meant the notice to go by SMS too; without the credentials it never would, without a word
    (noted in an acceptance pass)."""
    templates = {"SMS_TEMPLATE_RESCHEDULED": "1400101", "SMS_TEMPLATE_BOOKED": "1400100"}
    with pytest.raises(SettingsError, match="^SMS_TEMPLATE_BOOKED: set while SMS is off: SMS needs SMS_SDK_APP_ID"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **templates})
    on = load_settings(environ={"DATA_DIR": str(tmp_path), **templates, **SMS_FOUR})
    assert on.sms_template_for("booked") == "1400100"
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "SMS_TEMPLATE_BOOKED": " "}).sms_templates == {}


def test_production_accepts_a_hex_key_that_reads_as_words_in_l33t(tmp_path):
    """Random, 32 hex digits, and 81 % "words" to zxcvbn's l33t matching (one key in 40,000 is so): hex keys are
    not held to the words rule (review)."""
    key = "4ec47ed1dfd70749e149e7e0de35a460"
    assert load_settings(environ={"DATA_DIR": str(tmp_path), **PRODUCTION, "SECRET_KEY": key}).SECRET_KEY == key


@pytest.mark.parametrize("make", [lambda: secrets.token_hex(32), lambda: secrets.token_urlsafe(32),
                                  lambda: secrets.token_hex(64), lambda: secrets.token_hex(16)])
def test_production_accepts_random_secret_keys(tmp_path, make):
    for _ in range(20):  # bounded: each load runs zxcvbn once or twice (a few ms)
        key = make()
        assert load_settings(environ={"DATA_DIR": str(tmp_path), **PRODUCTION, "SECRET_KEY": key}).SECRET_KEY == key


def test_weak_keys_are_fine_outside_production(tmp_path):
    """Tests and development machines use short keys; only production signs real sessions with it."""
    assert load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "test", "SECRET_KEY": "x"}).SECRET_KEY == "x"


def test_prefixed_variables_become_template_ids(tmp_path):
    settings = load_settings({"SMS_TEMPLATE_BOOKED": "1400101"}, environ={
        "DATA_DIR": str(tmp_path), "WECHAT_TEMPLATE_REMINDER": "tpl-2", "WECHAT_TEMPLATE_BOOKED": " ", **SMS_FOUR})
    assert settings.sms_template_for("BOOKED") == "1400101" and settings.sms_template_for("reminder") is None
    assert settings.template_for("reminder") == "tpl-2" and settings.template_for("booked") is None


@pytest.mark.parametrize("name", ["WECHAT_TEMPLATE_BOOKD", "SMS_TEMPLATE_REMINDERS"])
def test_a_template_variable_naming_no_kind_of_notice_is_refused(tmp_path, name):
    """A typo would quietly leave that notice to another channel (a text, an SMS, or waiting for the person)."""
    with pytest.raises(SettingsError, match=f"^{name}: no notice is of the kind ") as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), name: "tpl-1"})
    assert "BOOKED" in str(excinfo.value) and "REMINDER" in str(excinfo.value)
    meant = {"WECHAT_TEMPLATE_BOOKD": "WECHAT_TEMPLATE_BOOKED", "SMS_TEMPLATE_REMINDERS": "SMS_TEMPLATE_REMINDER"}
    assert f"did you mean {meant[name]}?" in str(excinfo.value)  # as a misspelt setting's name is answered


@pytest.mark.parametrize("kind", ["JOINED", "READY", "EXPIRED", "CHECKED_IN", "NO_SHOW", "EVIDENCE_UPDATED"])
def test_an_sms_template_for_a_notice_never_sent_by_sms_is_refused(tmp_path, kind):
    """Only must-read notices go by SMS: the template would never be used (acceptance pass: accepted silently)."""
    with pytest.raises(SettingsError, match=f"^SMS_TEMPLATE_{kind}: {kind} notices never go by SMS; only the "
                                            "must-read ones do: BOOKED, CANCELLED"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **SMS_FOUR, f"SMS_TEMPLATE_{kind}": "1400100"})
    assert load_settings(environ={"DATA_DIR": str(tmp_path), f"WECHAT_TEMPLATE_{kind}": "tpl-1"}).template_for(kind)


@pytest.mark.parametrize("value", ["booked-notice", "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY", "12 34"])
def test_an_sms_template_id_is_the_console_s_number(tmp_path, value):
    """A name, or a WeChat template id in the wrong variable, would be refused by Tencent Cloud at the first
    must-read notice (review: not checked)."""
    with pytest.raises(SettingsError, match=r"^SMS_TEMPLATE_BOOKED: '.*' is not a template ID: .*digits only"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **SMS_FOUR, "SMS_TEMPLATE_BOOKED": value})


def test_a_template_id_is_read_without_the_spaces_around_it(tmp_path):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path), **SMS_FOUR, "SMS_TEMPLATE_BOOKED": " 1234567\n",
                                      "WECHAT_TEMPLATE_BOOKED": "tpl-1 "})
    assert (settings.sms_template_for("booked"), settings.template_for("booked")) == ("1234567", "tpl-1")


def test_the_sms_sign_is_given_without_its_brackets(tmp_path):
    """SignName is the approved sign's text, Tencent adds the 【】: the README says so, and they were accepted
    (acceptance pass)."""
    with pytest.raises(SettingsError, match="^SMS_SIGN_NAME: give the sign without 【】 .*: 交警快处$"):
        load_settings(environ={"DATA_DIR": str(tmp_path), **SMS_FOUR, "SMS_SIGN_NAME": "【交警快处】"})


def test_overrides_win_over_the_environment(tmp_path):
    settings = load_settings({"PHOTO_MIN_SHORT_SIDE": 800}, environ={"DATA_DIR": str(tmp_path),
                                                                     "PHOTO_MIN_SHORT_SIDE": "1000"})
    assert settings.PHOTO_MIN_SHORT_SIDE == 800


def test_settings_are_read_only(tmp_path):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path)})
    with pytest.raises(ValueError):
        settings.APP_ENV = "production"


@pytest.mark.parametrize(("token", "refused"), [("abc123", True), ("x" * 15, True), ("3f9a1c7e5b2d8046", False),
                                                ("", False)])  # empty: no token, /metrics kept off the public port
def test_production_refuses_a_short_metrics_token(tmp_path, token, refused):
    """/metrics answers on the public webhook's port: in production its bearer token has to be hard to guess
    (acceptance pass: any length was accepted). Outside production a short one is fine (tests, a laptop)."""
    environ = {"DATA_DIR": str(tmp_path), **PRODUCTION, "SECRET_KEY": secrets.token_hex(32), "METRICS_TOKEN": token}
    if refused:
        with pytest.raises(SettingsError, match=r"^METRICS_TOKEN: \d+ characters, too short when APP_ENV=production"):
            load_settings(environ=environ)
    else:
        assert load_settings(environ=environ).METRICS_TOKEN == token
    assert load_settings(environ={**environ, "APP_ENV": "development"}).METRICS_TOKEN == token


def test_the_metrics_token_length_the_defaults_file_gives_is_the_one_checked():
    """The README's table is written from config/defaults.toml, whose comment states the rule by hand."""
    from accident_service.settings_checks import METRICS_TOKEN_MIN_CHARS

    line = next(line for line in (CONFIG_DIR / "defaults.toml").read_text().splitlines()
                if line.startswith("METRICS_TOKEN "))
    assert f"in production at least {METRICS_TOKEN_MIN_CHARS} characters when set" in line


@pytest.mark.parametrize(("typed", "meant"), [("LOG_FROMAT", "LOG_FORMAT"), ("WECHAT_APPID", "WECHAT_APP_ID"),
                                              ("DATABASE_URI", "DATABASE_URL"), ("S3_ENDPOINT", "S3_ENDPOINT_URL"),
                                              ("WEB_CONCURENCY", "WEB_CONCURRENCY")])
def test_a_misspelt_setting_is_named_with_the_one_it_nearly_is(tmp_path, typed, meant):
    """Ignored, it left the setting meant at its default without a word (operator acceptance pass)."""
    with pytest.raises(SettingsError) as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), typed: "json"})
    assert str(excinfo.value) == f"{typed}: not a setting; did you mean {meant}?"


def test_a_misspelt_setting_is_named_beside_the_other_mistakes(tmp_path):
    with pytest.raises(SettingsError) as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), "LOG_FROMAT": "json", "BOOKING_OFFER_COUNT": "x"})
    assert str(excinfo.value).splitlines() == ["LOG_FROMAT: not a setting; did you mean LOG_FORMAT?",
                                               "BOOKING_OFFER_COUNT: expected a whole number, got 'x'"]


@pytest.mark.parametrize("other", ["TEST_DATABASE_URL", "BENCH_DATABASE_URL", "LOG_DIR", "GUNICORN_CMD_ARGS",
                                   "AWS_ACCESS_KEY_ID", "HOSTNAME", "APP_NAME"])
def test_another_programs_variables_are_left_alone(tmp_path, other):
    assert load_settings(environ={"DATA_DIR": str(tmp_path), other: "x"}).LOG_FORMAT == "text"
