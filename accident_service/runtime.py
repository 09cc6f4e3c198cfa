"""Everything a request, a job or a CLI command needs, built once from settings.

The Flask app keeps one :class:`Runtime` in ``app.extensions``; the scheduler
and CLI build the same object, so all entry points call features the same way.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from accident_service.clock import Clock, SystemClock
from accident_service.db import (
    SINGLE_STATEMENT_DEADLINE_SECONDS,
    make_engine,
    make_session_factory,
    run_in_transaction,
    run_single_statement,
    unit_of_work,
)
from accident_service.settings import Settings
from accident_service.storage import ObjectStore, make_store

T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: ObjectStore
    clock: Clock = field(default_factory=SystemClock)
    _statement_engine: Engine | None = field(default=None, init=False, repr=False)
    _statement_engine_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        with unit_of_work(self.session_factory) as session:
            yield session

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction, run again on a fresh connection if the first
        died before COMMIT (see accident_service.db.run_in_transaction)."""
        return run_in_transaction(self.engine, work)

    def single_statement(self, work: Callable[[Connection], T], *,
                         rerun: Callable[[Connection], T] | None = None) -> T:
        """``work(connection)``: one statement, committed on its own, without the BEGIN and COMMIT round trips on
        PostgreSQL; see accident_service.db.run_single_statement for a rerun after a lost connection."""
        return run_single_statement(self.statement_engine(), work, rerun=rerun)

    def statement_engine(self) -> Engine:
        """The engine :meth:`single_statement` uses.

        On PostgreSQL a second engine, built on first use (a push), whose connections stay in autocommit:
        switching a pooled connection to autocommit and back costs more CPU than the statement's own
        bookkeeping (40 µs a push, measured). Elsewhere the engine itself."""
        if self._statement_engine is None:
            with self._statement_engine_lock:
                if self._statement_engine is None:
                    self._statement_engine = (
                        make_engine(self.engine.url.render_as_string(hide_password=False), autocommit=True,
                                    answer_within=SINGLE_STATEMENT_DEADLINE_SECONDS)
                        if self.engine.dialect.name == "postgresql" else self.engine)
        return self._statement_engine

    @functools.cached_property
    def wechat(self):  # -> accident_service.wechat_api.client.WeChatApi
        """The WeChat API client, built on first use (web requests rarely need it)."""
        from accident_service.wechat_api.client import build_wechat_api

        return build_wechat_api(self)

    def close(self) -> None:
        self.engine.dispose()
        if self._statement_engine not in (None, self.engine):
            self._statement_engine.dispose()


def build_runtime(settings: Settings, *, clock: Clock | None = None, store: ObjectStore | None = None) -> Runtime:
    # Every wait for the server bounded: a hung server (or its disk) would otherwise hold each desk page, API call
    # and job that meets it, until every thread of the process waits on it.
    engine = make_engine(settings.DATABASE_URL, answer_within=settings.DATABASE_ANSWER_TIMEOUT_SECONDS)
    return Runtime(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                   store=store or make_store(settings), clock=clock or SystemClock())
