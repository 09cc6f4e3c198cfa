"""Settings: defaults, environment overrides, errors that name the variable."""

from __future__ import annotations

import pytest

from accident_service import create_app
from accident_service.settings import SettingsError, load_settings


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
])
def test_malformed_setting_names_the_variable(tmp_path, name, value):
    with pytest.raises(SettingsError) as excinfo:
        load_settings(environ={"DATA_DIR": str(tmp_path), name: value})
    assert str(excinfo.value).startswith(name)


def test_production_refuses_development_secrets(tmp_path):
    with pytest.raises(SettingsError, match="SECRET_KEY|WECHAT"):
        load_settings(environ={"DATA_DIR": str(tmp_path), "APP_ENV": "production"})


def test_unreachable_database_at_startup_names_database_url(tmp_path):
    from tests.support.servers import free_port

    with pytest.raises(SettingsError, match="^DATABASE_URL"):
        create_app({"DATA_DIR": str(tmp_path), "AUTO_MIGRATE": True,
                    "DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
