"""A few long-lived greenlets that do the database work of websocket handshakes.

Django keeps one database connection per thread, and under gevent each
greenlet counts as a thread: loading the session, user and groups in every
websocket's own greenlet would open and close a connection per handshake,
and a burst of reconnecting browsers would open hundreds at once. Handing
that work to a fixed set of greenlets bounds the connections per worker
process and keeps them open between handshakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from django.db import Error as DatabaseError
from django.db import connections
from gevent.event import AsyncResult
from gevent.queue import Queue

from .. import process

T = TypeVar("T")

#: Greenlets (and so at most database connections per alias) per worker process.
POOL_SIZE = 4


class DatabaseWorkers:
    """Runs callables on ``size`` greenlets that keep their database connections."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._jobs: Queue = Queue()
        self._greenlets: list[gevent.Greenlet] = []

    def run(self, job: Callable[..., T], *args: Any) -> T:
        """Run ``job(*args)`` on a worker greenlet and return (or raise) what it did."""
        self._greenlets = [g for g in self._greenlets if not g.dead]
        while len(self._greenlets) < self.size:
            self._greenlets.append(gevent.spawn(self._work))
        result: AsyncResult = AsyncResult()
        self._jobs.put((job, args, result))
        return result.get()  # type: ignore[no-any-return]

    def _work(self) -> None:
        while True:
            job, args, result = self._jobs.get()
            try:
                try:
                    value = job(*args)
                except DatabaseError:
                    # A connection kept open may have died (database restarted):
                    # drop this greenlet's connections and try once more.
                    connections.close_all()
                    value = job(*args)
            except Exception as exc:
                result.set_exception(exc)
            else:
                result.set(value)


def get_workers() -> DatabaseWorkers:
    """This process's workers (uWSGI forks after import: never share them with a parent)."""
    return process.resource("database workers", DatabaseWorkers)
