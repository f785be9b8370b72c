"""What one websocket is owed, in order and once: the delivery rules, without I/O.

Messages reach a websocket three ways: live from the worker's hub, stored
(the message persisted on each channel, read when it opens), and from
history (a backlog after ``resume=<id>``, or a catch-up after Redis came
back). :class:`Outbox` decides, for one websocket:

* **one message once**: by id, whichever way it came and on however many of
  the websocket's channels it was published; messages without an id (raw
  publishes by other programs) are never held back;
* **the fast path**: a live message is written at once, straight to the
  socket by the hub, only while nothing waits before it;
* **the bounded inbox**: what cannot be written at once waits, up to
  ``max_pending`` messages; past that the websocket is too slow
  (:attr:`Outbox.overflowed`) and is closed;
* **the catch-up gate**: while a catch-up from history is owed or under way,
  live messages wait behind it, so nothing newer overtakes what is recovered;
* **framing**: a resuming client gets every message as ``<id>\\n<payload>``
  (:func:`~ws4redis_uwsgi.core.envelope.with_id`), a plain ws4redis client the
  payload alone; ``!gap`` only for the former.

The hub, the subscriber and the websocket loop only feed it and drain it;
its tests feed it values and check what comes out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum

from .envelope import BusMessage, parse_id, plausible_id, with_id

#: Sent to a resuming client whose missed messages are no longer all in history.
GAP_NOTICE = b"!gap\n"


class Opening(Enum):
    """What a websocket gets first, before live messages."""

    #: The message stored on each of its channels (a plain or a fresh resuming client).
    STORED = "stored"
    #: The backlog after the id it resumed from, sent by the loop's first turn.
    BACKLOG = "backlog"
    #: ``!gap``, then live messages: it resumed from an id this Redis cannot have given out.
    GAP = "gap"


class Outbox:
    """The delivery state of one websocket (see the module docstring).

    :param origin: the websocket's own identity on the bus; its own messages
        come back to it only with ``echo``.
    :param with_ids: frames carry their id (the client asked for ``resume``).
    :param resume_from: the id the client resumed from, if any.
    :param arrived_ms: Redis's clock when the websocket arrived: a catch-up
        before any message was handed out starts there.
    """

    __slots__ = (
        "_caught_up",
        "_inbox",
        "_last",
        "arrived_ms",
        "catch_up_owed",
        "echo",
        "max_pending",
        "origin",
        "overflowed",
        "resume_from",
        "with_ids",
    )

    def __init__(
        self,
        *,
        origin: str | None = None,
        echo: bool = False,
        with_ids: bool = False,
        resume_from: str | None = None,
        max_pending: int = 1000,
        arrived_ms: int = 0,
    ) -> None:
        self.origin = origin
        self.echo = echo
        self.with_ids = with_ids or bool(resume_from)
        self.resume_from = resume_from or None
        self.max_pending = max_pending
        self.arrived_ms = arrived_ms
        #: The newest id handed out (as a comparable pair): older ones are repeats.
        self._last: tuple[int, int] | None = None
        self._inbox: deque[BusMessage] | None = None  # made when a message waits: an empty deque holds 0.6 KiB
        #: More than max_pending messages waited: the websocket is too slow and is closed.
        self.overflowed = False
        #: A catch-up from history is owed (after Redis came back, or Redis could not be read at the start).
        self.catch_up_owed = False
        # Neither owed nor under way nor overflowed: the one flag the fast path reads.
        self._caught_up = True

    # -- the opening -------------------------------------------------------------------

    def opening(self, redis_now_ms: int) -> Opening:
        """What the websocket gets first; a backlog is owed from then on (see :meth:`owe_catch_up`)."""
        if self.resume_from is None:
            return Opening.STORED
        if not plausible_id(parse_id(self.resume_from), redis_now_ms):
            self.resume_from = None  # from now on, like a fresh resuming client
            return Opening.GAP
        self.owe_catch_up()
        return Opening.BACKLOG

    # -- live messages, from the hub ------------------------------------------------

    def take_live(self, message: BusMessage, write: Callable[[bytes], bool] | None) -> bool:
        """A live message: True when nothing more is to be done, False when it waits (wake the loop).

        With ``write`` (the socket takes a frame at once, or returns False)
        and nothing waiting before it, the message is written now: the frame
        is built once per worker and shared by every websocket. A message the
        websocket published itself without ``echo``, or one it already has,
        is done without being written.
        """
        if not self.echo and message.origin is not None and message.origin == self.origin:
            return True
        if write is not None and self._inbox is None and self._caught_up:
            order = message.order
            if order is not None and self._last is not None and order <= self._last:
                return True  # already handed out
            if write(message.frame_with_id if self.with_ids else message.frame):
                if order is not None:
                    self._last = order
                return True
        self._queue(message)
        return False

    def _queue(self, message: BusMessage) -> None:
        if self._inbox is None:
            self._inbox = deque()
        if len(self._inbox) >= self.max_pending:
            self.overflowed = True
            self._caught_up = False
        else:
            self._inbox.append(message)

    # -- what the loop sends --------------------------------------------------------

    def next(self) -> BusMessage | None:
        """The next waiting message to send, or None; repeats are skipped, and nothing once overflowed."""
        while self._inbox and not self.overflowed:
            message = self._inbox.popleft()
            if self._is_new(message):
                return message
        self._inbox = None
        return None

    def clear(self) -> None:
        """Forget what waits: the websocket is gone."""
        self._inbox = None

    def payload(self, message: BusMessage) -> bytes:
        """The payload of ``message`` as this client receives it: behind its id for a resuming client."""
        return with_id(message.id, message.payload) if self.with_ids else message.payload

    def gap_notice(self) -> bytes | None:
        """What tells this client that history lost messages: ``!gap`` for a resuming client, nothing for a plain one."""
        return GAP_NOTICE if self.with_ids else None

    # -- stored messages and history --------------------------------------------------

    def fresh(self, messages: Iterable[BusMessage]) -> list[BusMessage]:
        """Those of ``messages`` (stored or from history, in id order) not handed out yet; records them."""
        return [m for m in messages if self._is_new(m)]

    def owe_catch_up(self) -> None:
        """A catch-up from history is owed: live messages wait until it is done."""
        self.catch_up_owed = True
        self._caught_up = False

    @property
    def position(self) -> str:
        """The id after which the client has every message: where a catch-up starts.

        The last id handed out; before any, the id it resumed from; else the
        moment it arrived (ids follow Redis's clock), so that a websocket that
        opened while Redis was away gets what was published once it was back.
        """
        if self._last is not None:
            return f"{self._last[0]}-{self._last[1]}"
        if self.resume_from:
            return self.resume_from
        return f"{self.arrived_ms}-0"

    def begin_catch_up(self) -> str:
        """Start the owed catch-up (live messages keep waiting until :meth:`end_catch_up`); returns the id it starts after."""
        self.catch_up_owed = False
        return self.position

    def end_catch_up(self, complete: bool) -> None:
        """The catch-up is over; if not ``complete`` (Redis refused), it is owed again."""
        self.catch_up_owed = self.catch_up_owed or not complete
        self._caught_up = not (self.catch_up_owed or self.overflowed)

    # -- ids -----------------------------------------------------------------------

    @property
    def last_id(self) -> str | None:
        return f"{self._last[0]}-{self._last[1]}" if self._last else None

    def _is_new(self, message: BusMessage) -> bool:
        order = message.order
        if order is None:
            return True
        if self._last is not None and order <= self._last:
            return False
        self._last = order
        return True
