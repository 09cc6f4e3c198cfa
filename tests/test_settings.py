"""Settings: defaults, environment overrides, errors that name the variable."""

from __future__ import annotations

from dataclasses import fields

import pytest

from accident_service import create_app
from accident_service.settings import Settings, SettingsError, load_settings, number_ranges


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
])
def test_malformed_setting_names_the_variable(tmp_path, name, value):
    with pytest.raises(SettingsError) as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), name: value})
    assert str(excinfo.value).startswith(name)


@pytest.mark.parametrize("app_env", ["development", "test", "production"])
def test_an_empty_wechat_token_is_refused_in_every_environment(tmp_path, app_env):
    """A GET signed with an empty token is a signature anybody can compute; it must never be echoed."""
    with pytest.raises(SettingsError, match="^WECHAT_TOKEN"):
        load_settings({"DATA_DIR": str(tmp_path), "APP_ENV": app_env, "WECHAT_TOKEN": "",
                       "SECRET_KEY": "real-secret", "WECHAT_APP_ID": "wx1234", "WECHAT_APP_SECRET": "real"},
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
    ("BOOKING_LEAD_MINUTES", "0", 0),
    ("NO_SHOW_GRACE_MINUTES", "0", 0),
    ("WECHAT_API_TIMEOUT_SECONDS", "0.5", 0.5),
    ("STORAGE_URL", "file://./var/objects", "file://./var/objects"),
    ("STORAGE_URL", "file:///srv/evidence", "file:///srv/evidence"),
])
def test_well_formed_values_are_accepted(tmp_path, name, value, expected):
    settings = load_settings(environ={"DATA_DIR": str(tmp_path), name: value})
    assert getattr(settings, name) == expected


def test_every_numeric_setting_has_a_range():
    """A new numeric setting needs a bound in number_ranges(), or 0 and negatives slip through."""
    numeric = {f.name for f in fields(Settings) if str(f.type) in {"int", "float"}}
    assert numeric == set(number_ranges())


def test_the_test_suites_settings_load(settings):
    """tests/conftest.py's overrides satisfy the checks every other test relies on."""
    assert settings.APP_ENV == "test"


def test_production_refuses_development_secrets(tmp_path):
    with pytest.raises(SettingsError, match="SECRET_KEY|WECHAT"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "production"})


def test_unreachable_database_at_startup_names_database_url(tmp_path):
    from tests.support.servers import free_port

    with pytest.raises(SettingsError, match="^DATABASE_URL"):
        create_app({"DATA_DIR": str(tmp_path), "AUTO_MIGRATE": True,
                    "DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
