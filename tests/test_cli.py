"""The console script, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ON_POSTGRES, POSTGRES_URL


def run_cli(*args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from accident_service.cli import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120, input=input)


@pytest.fixture
def cli_env(tmp_path):
    url = POSTGRES_URL if ON_POSTGRES else f"sqlite:///{tmp_path}/cli.db"
    return {"DATA_DIR": str(tmp_path), "DATABASE_URL": url}


@pytest.fixture
def chief(tmp_path) -> str:
    """A username of this test's own: on PostgreSQL the commands share one database that no fixture empties, and
    create-staff names a taken username before it asks for the password."""
    return f"chief-{tmp_path.name}".lower()


def test_db_upgrade_then_create_staff(cli_env, chief):
    result = run_cli("db", "upgrade", env=cli_env)
    assert result.returncode == 0, result.stderr
    result = run_cli("create-staff", chief, "--role", "supervisor",
                     env={**cli_env, "STAFF_PASSWORD": "correct horse battery"})
    assert result.returncode == 0, result.stderr
    assert f"created supervisor {chief}" in result.stdout
    again = run_cli("create-staff", chief, "--role", "supervisor",
                    env={**cli_env, "STAFF_PASSWORD": "correct horse battery"})
    assert again.returncode != 0 and "taken" in again.stderr


def test_create_staff_without_a_password_or_a_terminal_says_why_it_stopped(cli_env, chief):
    run_cli("db", "upgrade", env=cli_env)
    result = run_cli("create-staff", chief, "--role", "supervisor", env={**cli_env, "STAFF_PASSWORD": ""}, input="")
    assert result.returncode == 1 and "aborted: the input ended before the prompt was answered" in result.stderr
    assert "STAFF_PASSWORD" in result.stderr


def test_create_staff_takes_no_password_on_the_command_line(cli_env, chief):
    """Arguments are in `ps` and the shell's history: the password comes from STAFF_PASSWORD or the prompt only."""
    run_cli("db", "upgrade", env=cli_env)
    result = run_cli("create-staff", chief, "--role", "supervisor", "--password", "correct horse battery",
                     env={**cli_env, "STAFF_PASSWORD": ""}, input="")
    assert result.returncode == 2 and "--password" in result.stderr
    assert "--password" not in run_cli("create-staff", "--help", env=cli_env).stdout


def test_officer_needs_a_known_station(cli_env):
    run_cli("db", "upgrade", env=cli_env)
    result = run_cli("create-staff", "officer1", "--station", "NOPE", env={**cli_env, "STAFF_PASSWORD": "x" * 12})
    assert result.returncode == 1 and "unknown station" in result.stderr


def test_create_staff_names_a_wrong_station_before_asking_for_the_password(cli_env):
    run_cli("db", "upgrade", env=cli_env)
    no_station = run_cli("create-staff", "officer1", env={**cli_env, "STAFF_PASSWORD": ""}, input="")
    unknown = run_cli("create-staff", "officer1", "--station", "NOPE", env={**cli_env, "STAFF_PASSWORD": ""},
                      input="")
    assert no_station.returncode == 1 and no_station.stderr.strip() == "error: an officer needs a station"
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: unknown station 'NOPE'"


def test_create_staff_reads_a_piped_password_without_a_terminal_warning(cli_env, chief):
    run_cli("db", "upgrade", env=cli_env)
    password = "correct horse battery"
    result = run_cli("create-staff", chief, "--role", "supervisor", env={**cli_env, "STAFF_PASSWORD": ""},
                     input=f"{password}\n{password}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"created supervisor {chief}\n"  # the prompts went to stderr
    assert "Warning" not in result.stderr and password not in result.stderr
    short = run_cli("create-staff", f"{chief}-3", "--role", "supervisor", env={**cli_env, "STAFF_PASSWORD": ""},
                    input=f"short\n{password}\n{password}\n")  # named, and asked again before the confirmation
    assert short.returncode == 0 and "password must be at least 10 characters" in short.stderr, short.stderr
    mismatch = run_cli("create-staff", f"{chief}-2", "--role", "supervisor", env={**cli_env, "STAFF_PASSWORD": ""},
                       input=f"{password}\nsomething else\n")
    assert mismatch.returncode == 1 and "do not match" in mismatch.stderr


def test_malformed_database_url_fails_naming_it(tmp_path):
    result = run_cli("db", "upgrade", env={"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgres:/ /bad url"})
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [("db", "upgrade"), ("purge", "--dry-run")], ids=["db-upgrade", "purge"])
def test_a_malformed_defaults_file_is_named_in_one_line(tmp_path, command):
    """An operator's own copy of config/defaults.toml (ACCIDENT_SERVICE_CONFIG_DIR) with a TOML error in it
    (acceptance pass: a traceback, exit 1)."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "defaults.toml").write_text('APP_ENV = "development\n', encoding="utf-8")
    result = run_cli(*command, env={"DATA_DIR": str(tmp_path), "ACCIDENT_SERVICE_CONFIG_DIR": str(config_dir)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"configuration error: ACCIDENT_SERVICE_CONFIG_DIR: {config_dir / 'defaults.toml'}")
    assert "line 1" in result.stderr


def test_every_bad_setting_is_a_line_of_its_own_and_exit_2(tmp_path):
    result = run_cli("purge", "--dry-run", env={"DATA_DIR": str(tmp_path), "RETENTION_DAYS": "0",
                                                 "AUTO_MIGRATE": "maybe", "DESK_LOGIN_MAX_FAILURES": "x"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line.split(":")[1].strip() for line in result.stderr.splitlines()] == [
        "AUTO_MIGRATE", "RETENTION_DAYS", "DESK_LOGIN_MAX_FAILURES"]
    assert all(line.startswith("configuration error: ") for line in result.stderr.splitlines())


def test_help_lists_the_apps_commands_and_names_a_bad_setting_in_one_line(tmp_path):
    broken = run_cli("--help", env={"DATA_DIR": str(tmp_path), "DATABASE_URL": "notaurl"})
    assert "Traceback" not in broken.stderr and broken.stderr.startswith("configuration error: DATABASE_URL")
    help_text = run_cli("--help", env={"DATA_DIR": str(tmp_path)})
    assert help_text.returncode == 0
    assert {"purge", "create-staff", "openapi"} <= set(help_text.stdout.split())  # openapi: flask-smorest's, on the app
    # Flask's own options do not apply here: another app, a dotenv file, debug mode.
    assert not {"--app", "--env-file", "--debug"} & set(help_text.stdout.split())
    assert run_cli("--debug", "purge", "--help", env={"DATA_DIR": str(tmp_path)}).returncode == 2
    typo = run_cli("purg", env={"DATA_DIR": str(tmp_path)})
    assert typo.returncode == 2 and "Did you mean 'purge'?" in typo.stderr


def test_help_with_the_database_unreachable_still_lists_the_commands(tmp_path):
    from tests.support.servers import free_port

    result = run_cli("--help", env={"DATA_DIR": str(tmp_path),
                                    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"})
    assert result.returncode == 0 and {"purge", "db", "serve"} <= set(result.stdout.split())
    assert result.stderr.startswith("error: the database is unavailable") and len(result.stderr.splitlines()) == 1


def test_openapi_write_writes_the_api_description(tmp_path):
    target = tmp_path / "openapi.json"
    result = run_cli("openapi", "write", str(target), env={"DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(target.read_text())["openapi"].startswith("3.")


@pytest.mark.parametrize("auto_migrate", ["false", "true"])
@pytest.mark.parametrize("args", [("db", "upgrade"), ("purge", "--dry-run"), ("scheduler", "--once")])
def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path, args, auto_migrate):
    """Whether the command's own statements or the schema upgrade before them (AUTO_MIGRATE) met it: an outage,
    not a setting to change."""
    from tests.support.servers import free_port

    result = run_cli(*args, env={"DATA_DIR": str(tmp_path), "AUTO_MIGRATE": auto_migrate,
                                 "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the database is unavailable") and len(result.stderr.splitlines()) == 1


def _missing_database_url() -> str:
    from sqlalchemy import make_url

    return make_url(POSTGRES_URL).set(database="no_such_database_here").render_as_string(hide_password=False)


@pytest.mark.postgres_only  # a server that answers
@pytest.mark.parametrize("args", [("db", "upgrade"), ("purge", "--dry-run")])
def test_a_database_the_server_does_not_know_is_the_settings_fault_not_an_outage(tmp_path, args):
    """Trying again will not create it: DATABASE_URL named in one line, exit 2, no "try again"."""
    result = run_cli(*args, env={"DATA_DIR": str(tmp_path), "DATABASE_URL": _missing_database_url()})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("configuration error: DATABASE_URL: cannot open the database: ")
    assert "no_such_database_here" in result.stderr and "try again" not in result.stderr


@pytest.mark.postgres_only  # a server that answers
def test_a_command_meeting_a_database_the_server_does_not_know_does_not_say_try_again(tmp_path):
    result = run_cli("purge", "--dry-run", env={"DATA_DIR": str(tmp_path), "AUTO_MIGRATE": "false",
                                                "DATABASE_URL": _missing_database_url()})
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: the database could not run the command (")
    assert "try again" not in result.stderr


@pytest.mark.parametrize("args", [("db", "upgrade"), ("purge", "--dry-run")])
def test_a_sqlite_file_whose_directory_cannot_be_made_is_one_line(tmp_path, args):
    (tmp_path / "a-file").write_text("not a directory")
    result = run_cli(*args, env={"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/a-file/sub/x.db"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("configuration error: DATABASE_URL: cannot make the database's directory: ")


def test_db_upgrade_takes_alembics_relative_revisions(tmp_path):
    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    first = run_cli("db", "upgrade", "--revision", "+1", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("schema at ") and "(head is " in first.stdout  # one step, not the newest
    assert run_cli("db", "upgrade", env=env).stdout == "schema at head\n"


@pytest.mark.parametrize("revision", ["-1", "+1", "head+1"])
def test_db_upgrade_to_a_relative_revision_out_of_reach_names_the_option_and_changes_nothing(tmp_path, revision):
    """Behind the database ("-1") or past the newest ("+1", "head+1" at head): the option's fault (exit 2), not
    DATABASE_URL's nor a traceback; the schema stays where it was."""
    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    result = run_cli("db", "upgrade", "--revision", revision, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Invalid value for '--revision'" in result.stderr and "DATABASE_URL" not in result.stderr
    assert run_cli("db", "upgrade", "--revision", "base", env=env).stdout == "schema at head\n"


def test_db_upgrade_says_where_the_schema_is_not_what_was_asked(tmp_path):
    """An upgrade to an older revision changes nothing: the line says the schema is still at head."""
    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    for revision in ("base", "head-1"):
        result = run_cli("db", "upgrade", "--revision", revision, env=env)
        assert (result.returncode, result.stdout) == (0, "schema at head\n"), result.stderr


@pytest.mark.postgres_only
def test_a_migration_statement_the_database_refuses_is_not_blamed_on_database_url(tmp_path):
    """Connected, then a statement refused (a user without rights on the schema: SQLSTATE 42501): told as what the
    database answered, exit 1, not 'configuration error: DATABASE_URL'."""
    from sqlalchemy import create_engine, make_url, text

    role = f"accident_no_rights_{os.getpid()}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        url = make_url(POSTGRES_URL).set(username=role, password=None).render_as_string(hide_password=False)
        result = run_cli("db", "upgrade", env={"DATA_DIR": str(tmp_path), "DATABASE_URL": url})
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: the database could not run the command (")
    assert "permission denied" in result.stderr and "DATABASE_URL" not in result.stderr


def test_db_upgrade_to_a_revision_this_release_does_not_have_names_the_option(tmp_path):
    result = run_cli("db", "upgrade", "--revision", "no-such-revision",
                     env={"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Invalid value for '--revision'" in result.stderr and "no-such-revision" in result.stderr
    assert not (tmp_path / "x.db").exists() or (tmp_path / "x.db").stat().st_size == 0


def _databases_without_the_schema() -> list[str]:
    from tests import conftest

    # SQLite: an empty file (OperationalError); PostgreSQL: a search path with no tables (ProgrammingError).
    return ["sqlite"] + (["postgresql"] if conftest.ON_POSTGRES else [])


@pytest.mark.parametrize("database", _databases_without_the_schema())
def test_a_database_without_the_schema_is_one_line_that_does_not_say_try_again(tmp_path, database):
    """Trying again will not create the tables: the line says what the database answered, not "try again"."""
    from tests import conftest

    url = (f"sqlite:///{tmp_path}/empty.db" if database == "sqlite"
           else f"{conftest.POSTGRES_URL}?options=-csearch_path%3Dno_schema_here")
    result = run_cli("purge", "--dry-run", env={"DATA_DIR": str(tmp_path), "AUTO_MIGRATE": "false",
                                                "DATABASE_URL": url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: the database could not run the command (")
    assert "try again" not in result.stderr


def serving_serve(tmp_path, *args: str, **env: str):
    """`accident-service serve` on a free port, run from tmp_path with the quick start's relative defaults (none of
    this process's DATA_DIR, DATABASE_URL, STORAGE_URL), ``env`` on top; a context manager yielding its URL."""
    from pathlib import Path

    from tests.support.servers import free_port, serving

    port = free_port()
    base = {key: value for key, value in os.environ.items()
            if key not in {"DATA_DIR", "DATABASE_URL", "STORAGE_URL", "PROMETHEUS_MULTIPROC_DIR"}}
    return serving([str(Path(sys.executable).with_name("accident-service")), "serve", "--bind", f"127.0.0.1:{port}",
                    *args], env=base | {"APP_ENV": "development", "LOG_LEVEL": "WARNING"} | env, port=port,
                   log_path=tmp_path / "serve.log", cwd=tmp_path, ready_path="/readyz")


@pytest.mark.slow
def test_serve_keeps_the_callers_directory_for_relative_paths(tmp_path):
    """The quick start's relative defaults (./var) mean the same to `serve` as to every other command."""
    with serving_serve(tmp_path, "--workers", "1"):
        assert (tmp_path / "var" / "accident.db").exists()
        assert (tmp_path / "var" / "objects").is_dir()  # the readiness probe wrote its object here


# The console script with engine creations and schema upgrades counted, written to CALL_LOG at exit.
COUNTING_MAIN = """
import atexit, collections, json, os
import sqlalchemy
from alembic import command
calls = collections.Counter()
def counted(name, function):
    def wrapper(*args, **kwargs):
        # The runtime's autocommit companion (PostgreSQL, for its single statements) is counted apart.
        calls["autocommit_engines" if kwargs.get("isolation_level") == "AUTOCOMMIT" else name] += 1
        return function(*args, **kwargs)
    return wrapper
sqlalchemy.create_engine = counted("engines", sqlalchemy.create_engine)
command.upgrade = counted("migrations", command.upgrade)
atexit.register(lambda: open(os.environ["CALL_LOG"], "w").write(json.dumps(calls)))
from accident_service.cli import main
main()
"""


def run_counting(*args: str, env: dict[str, str], log) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    result = subprocess.run([sys.executable, "-c", COUNTING_MAIN, *args], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **env, "CALL_LOG": str(log)})
    return result, json.loads(log.read_text())


def test_create_staff_migrates_and_builds_its_runtime_once(cli_env, tmp_path, chief):
    """AUTO_MIGRATE on: one schema upgrade (its own engine) and one runtime engine, not two of each."""
    result, calls = run_counting("create-staff", chief, "--role", "supervisor",
                                 log=tmp_path / "calls.json",
                                 env={**cli_env, "AUTO_MIGRATE": "true", "STAFF_PASSWORD": "correct horse battery"})
    assert result.returncode == 0, result.stderr
    assert calls == {"migrations": 1, "engines": 2}, calls


@pytest.mark.parametrize("args", [("create-staff", "counted-{}", "--role", "supervisor"), ("generate-slots",),
                                  ("scheduler", "--once")])
def test_without_auto_migrate_a_command_opens_one_engine(cli_env, tmp_path, args):
    assert run_cli("db", "upgrade", env=cli_env).returncode == 0
    args = tuple(arg.format(tmp_path.name) for arg in args)
    result, calls = run_counting(*args, log=tmp_path / "calls.json", env={
        **cli_env, "AUTO_MIGRATE": "false", "STAFF_PASSWORD": "correct horse battery",
        "WECHAT_API_BASE_URL": "http://127.0.0.1:9/cgi-bin/"})
    assert result.returncode == 0, result.stderr
    assert calls.pop("autocommit_engines", 0) <= 1, calls  # one runtime's: the scheduler's claims use it
    assert calls == {"engines": 1}, calls


def test_db_upgrade_migrates_once_even_with_auto_migrate(cli_env, tmp_path):
    result, calls = run_counting("db", "upgrade", log=tmp_path / "calls.json", env={**cli_env, "AUTO_MIGRATE": "true"})
    assert result.returncode == 0, result.stderr
    assert calls["migrations"] == 1, calls


def test_a_weak_production_secret_key_is_one_line_and_exit_2(tmp_path):
    result = run_cli("create-staff", "x", env={"DATA_DIR": str(tmp_path), "APP_ENV": "production",
                                                "DATABASE_URL": "postgresql+psycopg://accident@db.internal/accident",
                                                "SECRET_KEY": "changeme", "WECHAT_APP_ID": "wx0123456789abcdef",
                                                "WECHAT_APP_SECRET": "real", "WECHAT_TOKEN": "real",
                                                "STAFF_PASSWORD": "x" * 12})
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: SECRET_KEY: ")
    assert "secrets.token_hex(32)" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "workers"), [("WEB_CONCURRENCY", []), ("WEB_CONCURRENCY", ["--workers", "1"]),
                                              ("GUNICORN_THREADS", [])])
def test_serve_names_a_bad_process_count_before_it_builds_the_app(tmp_path, name, workers):
    """gunicorn reads WEB_CONCURRENCY itself, before its configuration: a value that is not a number stopped it with
    a traceback, whatever --workers said. Either refused before the app is built: no schema is migrated for a
    start that cannot happen."""
    result = run_cli("serve", "--bind", "127.0.0.1:0", *workers,
                     env={"DATA_DIR": str(tmp_path), "APP_ENV": "development", name: "abc"})
    assert result.returncode == 2, result.stderr
    assert f"configuration error: {name}: expected a whole number between 1 and " in result.stderr
    assert "got 'abc'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "accident.db").exists()


@pytest.mark.parametrize(("env", "workers", "named"), [
    ({"WEB_CONCURRENCY": "99999999999999999999"}, [], "configuration error: WEB_CONCURRENCY: "),
    ({"GUNICORN_THREADS": "1000000"}, [], "configuration error: GUNICORN_THREADS: "),
    ({"WEB_CONCURRENCY": "1_000"}, [], "configuration error: WEB_CONCURRENCY: "),  # int() read 1000
    ({}, ["--workers", "99999999999999999999"], "--workers"),
])
def test_serve_refuses_a_process_count_with_extra_zeros(tmp_path, env, workers, named):
    """An acceptance pass's --workers 99999999999999999999 forked workers until the machine and PostgreSQL's
    connections ran out. Refused, exit 2, before anything starts."""
    result = run_cli("serve", "--bind", "127.0.0.1:0", *workers,
                     env={"DATA_DIR": str(tmp_path), "APP_ENV": "development", **env})
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "accident.db").exists()


def test_serve_names_a_port_gunicorn_cannot_listen_on_before_it_builds_the_app(tmp_path):
    """Before, gunicorn's OverflowError and its traceback, after a schema upgrade for a start that could not be."""
    result = run_cli("serve", env={"DATA_DIR": str(tmp_path), "APP_ENV": "development", "BIND": "127.0.0.1:99999"})
    assert result.returncode == 2, result.stderr
    assert "configuration error: BIND: expected HOST:PORT" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "accident.db").exists()


def test_serve_names_every_mistake_among_the_settings_and_gunicorn_s_variables_at_once(tmp_path):
    result = run_cli("serve", env={"DATA_DIR": str(tmp_path), "APP_ENV": "development", "LOG_LEVEL": "loud",
                                   "BIND": "127.0.0.1:99999", "WEB_CONCURRENCY": "abc", "GUNICORN_THREADS": "0"})
    assert result.returncode == 2, result.stderr
    named = [line.split(":")[1].strip() for line in result.stderr.splitlines()
             if line.startswith("configuration error: ")]
    assert named == ["LOG_LEVEL", "BIND", "WEB_CONCURRENCY", "GUNICORN_THREADS"]
    assert "Traceback" not in result.stderr and not (tmp_path / "accident.db").exists()


@pytest.mark.parametrize("command", [["purge", "--dry-run"], ["scheduler", "--once"], ["serve"]])
def test_a_metrics_directory_that_is_not_there_is_named_by_every_command(tmp_path, command):
    """prometheus_client writes a file there at a command's first count: before, a traceback."""
    result = run_cli(*command, env={"DATA_DIR": str(tmp_path), "APP_ENV": "development",
                                    "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("configuration error: PROMETHEUS_MULTIPROC_DIR: not a directory: "
                                     f"{tmp_path}/missing")


@pytest.mark.slow
def test_serve_binds_where_its_option_says_whatever_bind_says(tmp_path):
    """--bind wins over BIND, for gunicorn's config too (review: a bad BIND stopped a good --bind)."""
    with serving_serve(tmp_path, "--workers", "1", BIND="127.0.0.1:99999"):
        pass


@pytest.mark.slow
def test_serve_takes_the_gunicorn_config_beside_the_defaults_it_reads(tmp_path):
    """An install that is not a checkout (the image's `pip install .`) has no config/ beside the package: serve
    takes gunicorn's config from ACCIDENT_SERVICE_CONFIG_DIR, like the defaults, and the app from the package."""
    import shutil

    copy = tmp_path / "config"
    shutil.copytree(Path(__file__).resolve().parent.parent / "config", copy)
    with open(copy / "gunicorn.conf.py", "a") as conf:
        conf.write('\nprint("gunicorn config from the copy", file=sys.stderr, flush=True)\n')
    with serving_serve(tmp_path, "--workers", "1", ACCIDENT_SERVICE_CONFIG_DIR=str(copy)):
        pass
    assert "gunicorn config from the copy" in (tmp_path / "serve.log").read_text(errors="replace")


@pytest.mark.slow
def test_serve_with_a_config_directory_holding_only_the_defaults_takes_the_project_s_gunicorn_config(tmp_path):
    """Before serve read gunicorn's config there, such a directory was all an operator needed (review)."""
    import shutil

    (tmp_path / "config").mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "config" / "defaults.toml", tmp_path / "config")
    with serving_serve(tmp_path, "--workers", "1", ACCIDENT_SERVICE_CONFIG_DIR=str(tmp_path / "config")):
        pass


@pytest.mark.slow
def test_serve_runs_as_many_workers_as_web_concurrency_says(tmp_path):
    log = tmp_path / "serve.log"
    with serving_serve(tmp_path, WEB_CONCURRENCY="3", LOG_LEVEL="INFO"):  # gunicorn's boot lines are INFO
        deadline = time.monotonic() + 20
        while log.read_text(errors="replace").count("Booting worker") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert log.read_text(errors="replace").count("Booting worker") == 3


@pytest.mark.parametrize("fault", ["wrong_secret", "gateway_error"])
def test_wechat_menu_refused_or_unreachable_is_one_line_without_the_access_token(tmp_path, wechat, fault):
    """A wrong AppSecret (40125), or a gateway's 502 once a token was had: one line and exit 1, not a traceback,
    which quoted the transport error's own text, the menu call's URL and its access token with it."""
    from tests.conftest import WECHAT_APPID, WECHAT_SECRET, WECHAT_TOKEN

    wechat.inject_http_status("menu/create", 502, times=None)
    result = run_cli("wechat-menu", env={
        "DATA_DIR": str(tmp_path), "WECHAT_API_BASE_URL": wechat.api_base_url, "WECHAT_APP_ID": WECHAT_APPID,
        "WECHAT_APP_SECRET": "not-the-secret" if fault == "wrong_secret" else WECHAT_SECRET,
        "WECHAT_TOKEN": WECHAT_TOKEN, "REDIS_URL": ""})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: WeChat API ")
    assert "access_token=" not in result.stderr
    assert wechat.menu is None


def test_a_config_directory_without_its_defaults_file_is_named(tmp_path):
    """Read as empty, it blamed the first setting the file holds (APP_ENV: not set; acceptance pass)."""
    result = run_cli("db", "upgrade", env={"DATA_DIR": str(tmp_path),
                                           "ACCIDENT_SERVICE_CONFIG_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"configuration error: ACCIDENT_SERVICE_CONFIG_DIR: no defaults.toml in "
                                     f"{tmp_path / 'nowhere'}")


def test_flask_limiters_own_commands_the_readme_lists_run(cli_env):
    """`limiter config|limits` need Flask-Limiter's cli extra (rich): without it each said "Missing dependencies"
    and exited 1 (operator acceptance pass)."""
    assert run_cli("db", "upgrade", env=cli_env).returncode == 0
    for command in ("config", "limits"):
        result = run_cli("limiter", command, env=cli_env)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "desk.login" in run_cli("limiter", "limits", env=cli_env).stdout
