"""Everything a request, a job or a CLI command needs, built once from settings.

The Flask app keeps one :class:`Runtime` in ``app.extensions``; the scheduler
and CLI build the same object, so all entry points call features the same way.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from accident_service.clock import Clock, SystemClock
from accident_service.db import (
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

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        with unit_of_work(self.session_factory) as session:
            yield session

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction, run again on a fresh connection if the first
        died before COMMIT (see accident_service.db.run_in_transaction)."""
        return run_in_transaction(self.engine, work)

    def single_statement(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)``: one statement a rerun of which changes nothing, committed on its own, without
        the BEGIN and COMMIT round trips on PostgreSQL (see accident_service.db.run_single_statement)."""
        return run_single_statement(self.engine, work)

    @functools.cached_property
    def wechat(self):  # -> accident_service.wechat_api.client.WeChatApi
        """The WeChat API client, built on first use (web requests rarely need it)."""
        from accident_service.wechat_api.client import build_wechat_api

        return build_wechat_api(self)

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(settings: Settings, *, clock: Clock | None = None, store: ObjectStore | None = None) -> Runtime:
    engine = make_engine(settings.DATABASE_URL)
    return Runtime(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                   store=store or make_store(settings), clock=clock or SystemClock())
