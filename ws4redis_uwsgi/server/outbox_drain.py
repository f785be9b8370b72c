"""The durable outbox's drain in a websocket worker: one greenlet per process, a round every few seconds.

Each round publishes what :func:`ws4redis_uwsgi.bus.durable.drain` finds in
every database of ``WS4REDIS_OUTBOX_DATABASES``: rows older than the grace,
left by a process that died between its commit and its publish. Rounds are
``WS4REDIS_OUTBOX_DRAIN_INTERVAL`` seconds apart, jittered by half of it so
that the workers of a vassal do not all come at once; the rows (or, without
row locks, the database) are locked so that one worker publishes each row.
A round that fails (Redis or the database away) is logged and the next one
tries again; the greenlet never dies of it.
"""

from __future__ import annotations

import contextlib
import logging
import random

import gevent
import redis
from django.db import DatabaseError, connections

from .. import process
from ..bus import durable

logger = logging.getLogger("ws4redis_uwsgi")


class OutboxDrain:
    """The drain greenlet of this process."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: Messages this drain published, and rounds that failed on a database (metrics).
        self.published = 0
        self.failed_rounds = 0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> OutboxDrain:
        self._greenlet = gevent.spawn(self._run)
        return self

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval * random.uniform(0.5, 1.5))
            self.round()

    def round(self) -> int:
        """Drain every outbox database once; returns how many messages were published."""
        total = 0
        for alias in durable.databases():
            try:
                published = durable.drain(alias)
            except redis.RedisError as exc:
                self.failed_rounds += 1
                logger.warning("outbox of database %r not drained: Redis cannot be reached (%s)", alias, exc)
                continue
            except DatabaseError as exc:
                self.failed_rounds += 1
                logger.warning("outbox of database %r not drained: %s", alias, exc)
                with contextlib.suppress(DatabaseError):  # this greenlet's connection may be dead: the next round opens another
                    connections[alias].close()
                continue
            except Exception:
                self.failed_rounds += 1
                logger.exception("outbox of database %r not drained", alias)
                continue
            if published:
                logger.info("published %d message(s) a publisher left in the outbox of database %r", published, alias)
            total += published
        self.published += total
        return total


def start_drain() -> None:
    """Start this process's drain, once, when the outbox is on (:func:`~ws4redis_uwsgi.bus.durable.drain_interval`)."""
    interval = durable.drain_interval()
    if interval > 0:
        process.resource("outbox drain", lambda: OutboxDrain(interval).start())
