"""Schema management through Alembic, configured in code (no alembic.ini to lose)."""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from accident_service.db import make_engine, may_succeed_later
from accident_service.settings import SettingsError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Alembic's relative revisions: steps from the database's revision ("+1", "-1") or from a named one ("ae10+2").
RELATIVE_REVISION = re.compile(r"[+-]\d+$")


class RevisionOutOfReach(Exception):
    """A relative ``--revision`` that leads nowhere an upgrade can go from the database's revision: behind it
    ("-1"), or past the newest ("+1" at head, "head+1"). The option's fault; nothing was changed."""

    def __init__(self, revision: str) -> None:
        super().__init__(f"{revision} leads nowhere an upgrade can go from the database's revision (behind it, or "
                         "past the newest); db upgrade never goes back")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` (idempotent)."""
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


def upgrade_or_explain(database_url: str, revision: str = "head") -> None:
    """:func:`upgrade_database` for ``db upgrade`` and AUTO_MIGRATE, with what stops it said in one line.

    A database that cannot be reached now (refused, timed out, starting up), and a statement of a migration the
    database refused (it carries a SQLSTATE: a permission, a constraint), raise the driver's error as it is: the
    CLI says "try again" or what the database answered (exit 1). What stops the connection itself is
    DATABASE_URL's to fix, a SettingsError naming it (exit 2): a database or user the server does not know,
    refused credentials, a SQLite file that cannot be opened or made, a schema at a revision this release does
    not know. A relative ``revision`` that leads behind the database's revision or past the newest raises
    :class:`RevisionOutOfReach` (the CLI's option error), before any migration runs.
    """
    try:
        upgrade_database(database_url, revision)
    except AssertionError as exc:  # Alembic's own check, when "head+1" or the like points past the newest
        if RELATIVE_REVISION.search(revision):
            raise RevisionOutOfReach(revision) from exc
        raise
    except SQLAlchemyError as exc:
        if may_succeed_later(exc) or getattr(getattr(exc, "orig", None), "sqlstate", None):
            raise
        raise SettingsError(f"DATABASE_URL: cannot open the database: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}") from exc
    except OSError as exc:  # SQLite's directory cannot be made (read-only, a file in the way)
        raise SettingsError(f"DATABASE_URL: cannot make the database's directory: {exc}") from exc
    except CommandError as exc:  # e.g. the database is at a revision this release does not know
        if RELATIVE_REVISION.search(revision) and str(exc).startswith("Relative revision"):
            raise RevisionOutOfReach(revision) from exc
        raise SettingsError(f"DATABASE_URL: cannot upgrade the schema to {revision}: {exc}") from exc


def current_revision(database_url: str) -> str:
    """The database's schema revision as an operator reads it: "head", "<id> (head is <id>)", or "base" (empty)."""
    engine = make_engine(database_url)  # as migrations/env.py opens it: SQLite's busy timeout, WAL
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    if current is None:
        return "base"
    return "head" if current == head else f"{current} (head is {head})"


def make_revision(database_url: str, message: str) -> None:
    """Autogenerate a revision from the models (developers only)."""
    command.revision(alembic_config(database_url), message=message, autogenerate=True)
