"""The history bytes the websockets of one worker hold at once."""

from __future__ import annotations

import time

from gevent.event import Event

#: Backlog bytes (history read for resuming clients) a worker holds at once, about.
BACKLOG_BUDGET = 16 * 1024 * 1024


class BacklogBudgetError(Exception):
    """The worker holds as much backlog as it may, and none was freed in time."""


class BacklogBudget:
    """Bounds the history bytes the websockets of one worker hold at once.

    Every resuming websocket reads its backlog a page at a time and holds the
    page while it writes it to a client that may be slow. A page is reserved
    here before it is read (at the size a page aims at) and the reservation is
    corrected to its real size once read; while the worker holds ``limit``
    bytes, further reads wait until a page was written or its websocket gave
    up. The total can exceed ``limit`` only by pages larger than aimed at and
    by reads in flight (at most the command pool's connections).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._freed = Event()

    def reserve(self, nbytes: int, timeout: float) -> None:
        """Count ``nbytes`` as held, waiting up to ``timeout`` seconds for room.

        :raises BacklogBudgetError: no room within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.held and self.held + nbytes > self.limit:
            self._freed.clear()
            if not self._freed.wait(max(0.0, deadline - time.monotonic())):
                raise BacklogBudgetError(f"{self.held} bytes of backlog held by this worker")
        self.held += nbytes

    def resize(self, old: int, new: int) -> int:
        """A reservation of ``old`` bytes now holds ``new``; returns ``new``."""
        self.held += new - old
        if new < old:
            self._freed.set()
        return new

    def release(self, nbytes: int) -> None:
        self.held -= nbytes
        self._freed.set()
