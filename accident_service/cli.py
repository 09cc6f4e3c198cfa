"""The ``accident-service`` console script (a Flask CLI group)."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
import sqlalchemy.exc
from flask.cli import FlaskGroup, ScriptInfo

from accident_service import create_app
from accident_service.cli_runtime import command_runtime
from accident_service.db import DatabaseUnavailable, driver_error, is_outage, may_succeed_later
from accident_service.errors import ServiceError
from accident_service.settings import (
    CONFIG_DIR,
    PROCESS_COUNT_DEFAULTS,
    PROCESS_COUNT_RANGES,
    SettingsError,
    load_settings,
    metrics_dir,
    serving_environment,
)
from accident_service.wechat_api.client import WeChatApiError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _app_factory():
    return create_app()


class _ServiceGroup(FlaskGroup):
    """Flask's group, listing the app's commands (flask-smorest's ``openapi``) beside its own, with a bad setting
    named in one line rather than a traceback when the app cannot be built to list them.

    Without Flask's own options: the app is this one (``--app``), settings come from the environment and
    config/defaults.toml only (``--env-file`` would read a dotenv file), and debug mode is never on (``--debug``).
    """

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.params = [param for param in self.params if param.name not in {"env_file", "app", "debug"}]

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        names = set(click.Group.list_commands(self, ctx))
        try:
            names.update(ctx.ensure_object(ScriptInfo).load_app().cli.list_commands(ctx))
        except SettingsError as exc:
            click.echo(exc.report(), err=True)
        except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError) as exc:  # met while migrating (AUTO_MIGRATE)
            click.echo(f"error: {_database_error(exc)}", err=True)
        return sorted(names)


# Settings come from the environment and config/defaults.toml only: no .env file is read (python-dotenv
# is installed as a dependency of pydantic-settings, and Flask would otherwise load one from the cwd).
@click.group(cls=_ServiceGroup, create_app=_app_factory, add_default_commands=False, add_version_option=False,
             load_dotenv=False)
def cli() -> None:
    """Traffic-accident self-report service.

    Every command works with the one app the group creates (settings read, schema upgraded when
    AUTO_MIGRATE, runtime built), except `db upgrade`, which needs only the settings.
    """


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade", with_appcontext=False)  # no app: AUTO_MIGRATE would migrate before the command does
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema (SQLite or PostgreSQL, from DATABASE_URL)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from accident_service.schema import (
        RELATIVE_REVISION,
        RevisionOutOfReach,
        alembic_config,
        current_revision,
        upgrade_or_explain,
    )

    database_url = load_settings().DATABASE_URL
    try:  # a revision this release does not have is the option's fault, not the database's
        if not RELATIVE_REVISION.search(revision):  # "+1", "ae10+2": resolved against the database by Alembic
            ScriptDirectory.from_config(alembic_config(database_url)).get_revisions(revision)
        upgrade_or_explain(database_url, revision)
    except (CommandError, RevisionOutOfReach) as exc:
        raise click.BadParameter(str(exc), param_hint="'--revision'") from None
    # What the database is at now, not what was asked: an upgrade to an older revision ("base") changes nothing.
    click.echo(f"schema at {current_revision(database_url)}")


@cli.command("create-staff")
@click.argument("username")
@click.option("--role", type=click.Choice(["officer", "supervisor"]), default="officer", show_default=True)
@click.option("--station", "station_code", help="Station code (required for officers).")
def create_staff_command(username: str, role: str, station_code: str | None) -> None:
    """Create a desk staff account. The password: STAFF_PASSWORD, else asked (twice) once the rest is checked;
    without a terminal, read as two lines from standard input."""
    from accident_service.desk.accounts import InvalidStaffInput, check_new_staff, check_password, create_staff

    runtime = command_runtime()
    # Never an option: a password on the command line is in `ps` and the shell's history (acceptance pass).
    password = os.environ.get("STAFF_PASSWORD") or None
    if password is None:  # unset or blank
        with runtime.unit_of_work() as session:  # not held open while someone types
            check_new_staff(session, username=username, role=role, station_code=station_code)
        # Echo is hidden only on a terminal: getpass without one warns (GetPassWarning) and reads stdin anyway.
        # The prompts go to stderr, leaving stdout to the command's answer.

        def checked(typed: str) -> str:  # a weak password is named (click prints it) and asked again at once
            try:
                check_password(typed)
            except InvalidStaffInput as exc:
                raise click.UsageError(exc.message) from None
            return typed

        password = click.prompt("Password", hide_input=sys.stdin.isatty(), confirmation_prompt=True, err=True,
                                value_proc=checked)
    with runtime.unit_of_work() as session:
        user = create_staff(session, username=username, password=password, role=role,
                            station_code=station_code, clock=runtime.clock)
        click.echo(f"created {user.role.value} {user.username}")


@cli.command("serve", with_appcontext=False)  # the app is built after the process counts are checked
@click.option("--bind", default=lambda: os.environ.get("BIND", "127.0.0.1:8000"), show_default="127.0.0.1:8000")
@click.option("--workers", type=click.IntRange(min=1, max=int(PROCESS_COUNT_RANGES["WEB_CONCURRENCY"].maximum)),
              default=None, show_default=f"WEB_CONCURRENCY, else {PROCESS_COUNT_DEFAULTS['WEB_CONCURRENCY']}",
              help="gunicorn worker processes.")
def serve(bind: str, workers: int | None) -> None:
    """Run the web service under gunicorn (schema upgraded first when AUTO_MIGRATE)."""
    # Every mistake named before a migration runs; WEB_CONCURRENCY even with --workers: gunicorn reads it itself
    # before its configuration, and a value that is not a number stops it with a traceback.
    environment = serving_environment(bind)
    workers = workers or environment.workers
    os.environ["BIND"] = environment.bind  # what gunicorn's config checks is what it binds
    package_parent = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
    # The gunicorn config beside defaults.toml (ACCIDENT_SERVICE_CONFIG_DIR: an install that is not a checkout),
    # else the checkout's (a directory holding only an operator's defaults.toml), and the app from the package's
    # factory, not the checkout's wsgi.py; the caller's working directory kept: relative paths (DATA_DIR, a SQLite
    # file, file:// storage) mean what they mean to every other command.
    gunicorn_config = next((path for path in (CONFIG_DIR / "gunicorn.conf.py",
                                              Path(package_parent, "config", "gunicorn.conf.py")) if path.is_file()),
                           None)
    if gunicorn_config is None:
        raise SettingsError(f"ACCIDENT_SERVICE_CONFIG_DIR: no gunicorn.conf.py in {CONFIG_DIR} (serve runs gunicorn "
                            "with it: copy the project's config/gunicorn.conf.py there)")
    command_runtime().close()  # the app was built: settings and schema are fine; gunicorn's workers build their own
    args = [sys.executable, "-m", "gunicorn", "--config", str(gunicorn_config),
            "--pythonpath", package_parent, "--bind", bind, "--workers", str(workers),
            "accident_service:create_app()"]
    os.execv(sys.executable, args)


@cli.command("sandbox", with_appcontext=False)  # builds its own app, wired to the emulators it starts
@click.option("--bind", default=lambda: os.environ.get("BIND", "127.0.0.1:8000"), show_default="127.0.0.1:8000",
              help="host:port to serve on (port 0: a free one).")
def sandbox_command(bind: str) -> None:
    """Run the whole service on this machine with emulated WeChat and SMS: two phones in a browser and the desk.

    Data goes to DATA_DIR (default ./var/sandbox). Refused in production and beside real credentials.
    """
    import signal
    import threading

    from accident_service.sandbox import launcher

    try:
        sandbox = launcher.start(bind)
    except launcher.SandboxRefused as exc:
        raise click.ClickException(f"sandbox refused: {exc}") from exc
    except OSError as exc:  # the system's reason; a hint where another port is the cure
        hint = {errno.EADDRINUSE: "; choose another with --bind 127.0.0.1:PORT",
                errno.EACCES: "; choose another (1024 or above) with --bind 127.0.0.1:PORT",
                errno.EADDRNOTAVAIL: " (not an address of this machine; 127.0.0.1 is)"}.get(exc.errno, "")
        raise click.ClickException(f"sandbox cannot listen on {bind}: {exc.strerror or exc}{hint}") from exc
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    click.echo(f"sandbox running: open {sandbox.url}/sandbox/\n"
               f"  desk: {sandbox.desk_url}  username: {launcher.DEMO_USERNAME}  password: {launcher.DEMO_PASSWORD}\n"
               "  Ctrl-C stops it")
    sys.stdout.flush()
    try:
        while not stopped.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()


#: Seconds between a starting scheduler's tries at the database, doubling to the last.
STARTUP_WAITS = (1, 2, 4, 8, 15, 30)


def _once_the_database_answers(start: Callable[[], T], *, say: Callable[[str], object]) -> T:
    """``start()``, tried again while the database is unavailable (a restart, a failover, the whole stack starting
    at once): a scheduler is a daemon, and one that exited left messages leased to a worker that died with nobody
    to sweep them (fault pass). Not what trying again will not cure (a bad setting: exit 2). ``say``: where each
    wait is told (stderr before the app, which configures logging, is built; its log after)."""
    for attempt in itertools.count():
        try:
            return start()
        except Exception as exc:
            if not is_outage(exc):
                raise
            wait = STARTUP_WAITS[min(attempt, len(STARTUP_WAITS) - 1)]
            say(f"waiting for the database ({_first_line(exc)}); trying again in {wait} s")
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


@cli.command("scheduler", with_appcontext=False)  # the app is built once the database answers
@click.option("--once", is_flag=True, help="Run every job once and exit.")
def scheduler_command(once: bool) -> None:
    """Run the periodic jobs (inbox, outbox, reminders, expiry, no-shows, slots)."""
    import signal

    from accident_service import jobs

    if once:
        runtime = command_runtime()
        jobs.generate_slots(runtime, jobs.worker_name())
        click.echo(json.dumps(jobs.run_all_once(runtime, jobs.worker_name())))
        return

    def stop_waiting(*_: object) -> None:  # as PID 1 in a container SIGTERM would do nothing by default
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_waiting)
    try:
        runtime = _once_the_database_answers(command_runtime, say=lambda line: click.echo(line, err=True))
    except SystemExit:
        return
    scheduler = jobs.build_scheduler(runtime)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second signal (Ctrl-C twice; `timeout` signals the child, then its group) while stopping:
            # raised, it went through APScheduler's shutdown listener (the metrics server's shutdown() waiting)
            # as an ERROR and a traceback; the first one's stop goes on.
            log.info("scheduler stopping already; %s ignored", signal.Signals(signum).name)
            return
        stopping = True
        if scheduler.running:
            scheduler.shutdown(wait=False)
        else:  # still starting (slot generation): shutdown() would raise SchedulerNotRunningError
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # Ctrl-C: the same clean stop
    try:
        _once_the_database_answers(lambda: jobs.generate_slots(runtime, jobs.worker_name()), say=log.warning)
        # A log line, not a print: with LOG_FORMAT=json every line of the process is one JSON object.
        log.info("scheduler %s running", jobs.worker_name())
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        runtime.close()


@cli.command("purge")
@click.option("--days", type=click.IntRange(1, 3650), default=None,
              help="Purge cases closed longer ago than this many days (default RETENTION_DAYS).")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
def purge_command(days: int | None, dry_run: bool) -> None:
    """Delete the photos and personal data of cases closed longer ago than the retention (prints JSON counts).

    Case numbers, statuses, times, fingerprints and the (anonymised) audit trail stay;
    running it again changes nothing more. The scheduler runs it nightly.
    """
    from accident_service.retention import PurgeStopped, purge_closed_cases

    try:
        report = purge_closed_cases(command_runtime(), days=days, dry_run=dry_run)
    except PurgeStopped as exc:  # the cases of the batch that met it and after are kept; run it again later
        click.echo(json.dumps(exc.report.as_dict()))  # what did change (what belongs to no case, cases before)
        raise click.ClickException(f"storage: {exc} ({exc.report.cases_kept} cases kept for the next run; "
                                   "what was purged is on stdout)") from exc
    click.echo(json.dumps(report.as_dict()))


@cli.command("wechat-menu")
def wechat_menu_command() -> None:
    """Install the official account's menu (report an accident / my case)."""
    from accident_service.wechat.menu import MENU

    runtime = command_runtime()
    runtime.wechat.create_menu(MENU)
    click.echo("menu installed")


def _register_feature_commands() -> None:
    from accident_service.cli_api import COMMANDS as API_COMMANDS
    from accident_service.cli_stations import generate_slots_command, import_stations_command

    cli.add_command(import_stations_command)
    cli.add_command(generate_slots_command)
    for command in API_COMMANDS:
        cli.add_command(command)


_register_feature_commands()


def _database_error(exc: BaseException) -> str:
    """What the database answered, in a line, with "try again" only where trying again can help."""
    told = DatabaseUnavailable().message if may_succeed_later(exc) else "the database could not run the command"
    return f"{told} ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    """The first line of what the driver said (a psycopg error's next lines are hints)."""
    return str(driver_error(exc)).strip().splitlines()[0]


def main() -> None:
    try:
        metrics_dir()  # before a command counts anything into it
        cli.main(prog_name="accident-service", standalone_mode=False)
    except SettingsError as exc:
        click.echo(exc.report(), err=True)
        sys.exit(2)
    except ServiceError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except WeChatApiError as exc:
        # The platform refused the call (a wrong AppSecret, an address it does not allow) or could not be reached:
        # one line, its text without the call's query string. The traceback would quote the transport error's
        # own text, the access token in its URL with it, on a terminal the log filter does not reach.
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError) as exc:
        # A command's own statements (purge) outside run_in_transaction, or a database not reachable now while
        # migrating first: one line.
        click.echo(f"error: {_database_error(exc)}", err=True)
        sys.exit(1)
    except click.exceptions.Abort as exc:  # Ctrl-C, or a prompt meeting the end of its input (no terminal)
        click.echo("aborted: the input ended before the prompt was answered (without a terminal, give the value by "
                   "its environment variable, e.g. STAFF_PASSWORD)"
                   if isinstance(exc.__context__, EOFError) else "aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
