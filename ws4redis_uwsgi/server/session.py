"""One websocket's life on a worker: what it gets first, its turns, its end, and one policy for errors.

Websockets that stay in their uWSGI request (and those of the development
server) take their turns in a greenlet that waits on the socket
(:meth:`~ws4redis_uwsgi.server.loop.WebsocketWSGIServer.run_websocket`);
detached websockets take them from event-loop callbacks
(:class:`~ws4redis_uwsgi.server.detached.DetachedSession`). Both drive a
:class:`Session`, so both start, step, fail and end the same way.
"""

from __future__ import annotations

import logging
import random
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..core.close_codes import CloseCode, restart_reason
from ..core.exceptions import SlowConsumerError, WebSocketError
from ..core.inbound import InboundPolicy
from ..core.text import loggable
from .limits import inbound_policy
from .metrics import get_metrics

if TYPE_CHECKING:
    from ..bus.subscriber import RedisSubscriber
    from .adapter import LoopServer, Websocket

logger = logging.getLogger("ws4redis_uwsgi")


class Turn(Enum):
    """How a turn of a websocket's loop ended."""

    #: Nothing more to do until the socket or the hub wakes the websocket.
    DONE = "done"
    #: The client sent more than one turn takes: another turn soon, after the other websockets.
    MORE = "more"
    #: The websocket must end (the client left, or an error closed it).
    END = "end"


class Session:
    """The life of one upgraded websocket (see the module docstring)."""

    __slots__ = ("_ended", "inbound", "path", "server", "subscriber", "websocket")

    def __init__(self, server: LoopServer, websocket: Websocket, subscriber: RedisSubscriber, path: str) -> None:
        self.server = server
        self.websocket = websocket
        self.subscriber = subscriber
        self.path = path
        # Made at the first turn, not before: a token bucket starts full, so later is the
        # same as now, and an idle websocket that never takes a turn holds none.
        self.inbound: InboundPolicy | None = None
        self._ended = False

    @property
    def live(self) -> bool:
        """Whether the websocket goes on: it is open and the worker is not stopping."""
        return not self.websocket.closed and not self.server.stopping

    def open(self, waiter: Any) -> bool:
        """Send what the websocket gets first; False when it must end. ``waiter.wake()`` asks for a turn."""
        return self._guard(self.server.start_websocket, self.websocket, self.subscriber, waiter)

    def turn(self) -> Turn:
        """One turn of the loop (:meth:`~ws4redis_uwsgi.server.loop.WebsocketWSGIServer.step`)."""
        inbound = self.inbound_policy()
        try:
            more = self.server.step(self.websocket, self.subscriber, inbound)
        except Exception as exc:
            self._fail(exc)
            return Turn.END
        return Turn.MORE if more else Turn.DONE

    def inbound_policy(self) -> InboundPolicy:
        """The client's limits, made the first time a turn (or anything else) reads what it sent."""
        if self.inbound is None:
            self.inbound = inbound_policy(time.monotonic())
            if hasattr(self.websocket, "inbound"):
                self.websocket.inbound = self.inbound  # adapters that see pings and pongs count them too
        return self.inbound

    def close_if_stopping(self) -> None:
        """When the worker stops or reloads, close with 1012 so that the client reconnects (and resumes) elsewhere."""
        if self.server.stopping:
            reason = restart_reason(random.uniform(0, self.server.restart_spread))
            self._guard(self.websocket.close, CloseCode.SERVICE_RESTART, reason)

    def end(self) -> None:
        """Give back the connection slot, the channels and the socket; once, whatever happened before."""
        if self._ended:
            return
        self._ended = True
        try:
            self.server.end_websocket(self.websocket, self.subscriber)
        finally:
            self.websocket.dispose()

    def _guard(self, function: Any, *args: Any) -> bool:
        """Run ``function``; False when the websocket must end (see :meth:`_fail`)."""
        try:
            function(*args)
        except Exception as exc:
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: Exception) -> None:
        """The one error policy of every websocket.

        The client going away is no error; a client that did not take a
        frame in time, or fell too far behind while one waited (reset), is a
        slow consumer, counted; anything else is logged with
        its traceback and closes the websocket with 1011, never with the text
        of the exception.
        """
        if isinstance(exc, SlowConsumerError):
            get_metrics().slow_consumer_closes += 1
            logger.warning("reset a websocket that fell behind (%s)", exc)
            return
        if isinstance(exc, WebSocketError):
            return
        logger.error("websocket on %s failed", loggable(self.path), exc_info=exc)
        self.websocket.close(CloseCode.INTERNAL_ERROR)
