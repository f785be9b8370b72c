"""What one websocket is owed, in order and once: the delivery rules, without I/O.

Messages reach a websocket three ways: live from the worker's hub, stored
(the message persisted on each channel, read when it opens), and from
history (a backlog after ``resume=<token>``, or a catch-up after Redis came
back). :class:`Outbox` decides, for one websocket:

* **one message once**: by its position in its channel (ids grow per
  channel), whichever way it came; a message published to several of the
  websocket's channels, and a message of the durable outbox (which may be
  published again after a crash, under another id or with none), by its
  uid (:data:`RECENT_UIDS` looked back at); messages without an id or a
  uid (history off, raw publishes by other programs) are never held back,
  but for a stored one whose live copy already waits (by its content);
* **the fast path**: a live message is written at once, straight to the
  socket by the hub, only while nothing waits before it;
* **the bounded inbox**: what cannot be written at once waits, up to
  ``max_pending`` messages; past that the websocket is too slow
  (:attr:`Outbox.overflowed`) and is closed;
* **the catch-up gate**: while a catch-up from history is owed or under way,
  live messages wait behind it, so nothing newer overtakes what is recovered;
* **positions and framing**: where the websocket is in each of its channels
  (:mod:`~ws4redis_uwsgi.core.positions`); a resuming client gets every
  message as ``<token>\\n<payload>``, the token being its positions once it
  has that message; a plain ws4redis client the payload alone; ``!gap`` only
  for the former.

The hub, the subscriber and the websocket loop only feed it and drain it;
its tests feed it values and check what comes out.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from itertools import islice

from .envelope import BusMessage, is_durable_uid, plausible_id, with_token
from .positions import TOKEN_UIDS, Order, decode_token, encode_token

#: Tokens kept by _token: the resuming clients of a channel get the same one with each message.
TOKEN_CACHE = 1024

#: Sent to a resuming client whose missed messages are no longer all in history.
GAP_NOTICE = b"!gap\n"
#: Uids a websocket remembers (of multi-channel messages when it has several channels, of durable
#: messages always): a copy arriving later than that many such messages is sent again.
RECENT_UIDS = 64


class Opening(Enum):
    """What a websocket gets first, before live messages."""

    #: The message stored on each of its channels (a plain or a fresh resuming client).
    STORED = "stored"
    #: The backlog after the positions it resumed from, sent by the loop's first turn.
    BACKLOG = "backlog"
    #: ``!gap``, then live messages: it resumed from a position this Redis cannot have given out.
    GAP = "gap"


class Outbox:
    """The delivery state of one websocket (see the module docstring).

    :param origin: the websocket's own identity on the bus; its own messages
        come back to it only with ``echo``.
    :param with_ids: frames carry the resume token (the client asked for ``resume``).
    :param resume: the token the client resumed from, if any (checked by the
        handshake: :func:`~ws4redis_uwsgi.core.positions.decode_token` reads it).
    :param arrived_ms: Redis's clock when the websocket arrived: the position
        of a channel where it got nothing yet.
    """

    __slots__ = (
        "_caught_up",
        "_inbox",
        "_positions",
        "_recent",
        "_resumed",
        "_stored",
        "arrived_ms",
        "catch_up_owed",
        "channels",
        "echo",
        "gap_owed",
        "max_pending",
        "origin",
        "overflowed",
        "resume",
        "with_ids",
    )

    def __init__(
        self,
        *,
        origin: str | None = None,
        echo: bool = False,
        with_ids: bool = False,
        resume: str | None = None,
        max_pending: int = 1000,
        arrived_ms: int = 0,
    ) -> None:
        self.origin = origin
        self.echo = echo
        self.with_ids = with_ids or bool(resume)
        self.resume = resume or None
        self.max_pending = max_pending
        self.arrived_ms = arrived_ms
        #: The websocket's channels, in the order it subscribed them (set by the subscriber).
        self.channels: tuple[str, ...] = ()
        # The last position handed out per channel, made with the first message.
        self._positions: dict[str | None, Order] | None = None
        # The positions the client resumed from, per channel.
        self._resumed: dict[str, Order] | None = None
        # The stored message handed out per channel when it was older than the channel's position.
        self._stored: dict[str | None, Order] | None = None
        # Uids of recent multi-channel and durable messages (an insertion-ordered dict as a bounded set).
        self._recent: dict[str, None] | None = None
        self._inbox: deque[BusMessage] | None = None  # made when a message waits: an empty deque holds 0.6 KiB
        #: More than max_pending messages waited: the websocket is too slow and is closed.
        self.overflowed = False
        #: A catch-up from history is owed (after Redis came back, or Redis could not be read at the start).
        self.catch_up_owed = False
        #: The client must be told of a gap before its backlog (its token could not be read whole).
        self.gap_owed = False
        # Neither owed nor under way nor overflowed: the one flag the fast path reads.
        self._caught_up = True

    # -- the opening -------------------------------------------------------------------

    def opening(self, redis_now_ms: int) -> Opening:
        """What the websocket gets first; a backlog is owed from then on (see :meth:`owe_catch_up`).

        Call it once :attr:`channels` is set: the token's positions are theirs.
        """
        if self.resume is None:
            return Opening.STORED
        token = decode_token(self.resume)
        known, ambiguous = token.positions(self.channels)
        if any(not plausible_id(order, redis_now_ms) for order in known.values()):
            self.resume = None  # from now on, like a fresh resuming client
            return Opening.GAP
        self._resumed = known
        if token.uids:
            self._recent = dict.fromkeys(token.uids)
        self.gap_owed = bool(ambiguous)
        self.owe_catch_up()
        return Opening.BACKLOG

    # -- live messages, from the hub ------------------------------------------------

    def take_live(self, message: BusMessage, write: Callable[[bytes], bool] | None) -> bool:
        """A live message: True when nothing more is to be done, False when it waits (wake the loop).

        With ``write`` (the socket takes a frame at once, or returns False)
        and nothing waiting before it, the message is written now: a plain
        client's frame is built once per worker and shared by every
        websocket. A message the websocket published itself without
        ``echo``, or one it already has, is done without being written.
        """
        if not self.echo and message.origin is not None and message.origin == self.origin:
            return True
        if write is not None and self._inbox is None and self._caught_up:
            # The common cases first, inlined: every live message to every idle websocket comes here.
            # bus/_fanout.c copies them (bus/fanout.py): change one, change the other.
            order = message.order
            positions = self._positions
            before = positions.get(message.channel) if positions is not None and order is not None else None
            if message.uid is None and order is None:
                # Without an id (history off, or published by another program): nothing holds it back, nothing to record.
                if write(self.frame(message)):
                    return True
            elif order is not None and before is not None and message.uid is None and self._resumed is None:
                # A message of one channel that has a position, to a websocket that did not resume.
                if order <= before:
                    return True  # already handed out
                positions[message.channel] = order  # type: ignore[index]
                if write(self.frame(message)):
                    return True
                positions[message.channel] = before  # type: ignore[index]
            else:
                if self._seen(message):
                    self._advance(message)
                    return True
                recorded = self._record(message)
                if write(self.frame(message)):
                    return True
                self._unrecord(message, recorded)
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
        """The payload of ``message`` as this client receives it, right after it was handed out.

        A resuming client gets it behind its token, which then says that the
        client has this message and everything before it on every channel.
        A notice (a presence event) goes as it is: it starts with ``!``, which no token does.
        """
        return with_token(self.token(), message.payload) if self._tokened(message) else message.payload

    def frame(self, message: BusMessage) -> bytes:
        """The websocket frame of :meth:`payload`: for a plain client (and notices) the one every websocket shares."""
        return message.frame_with_token(self.token()) if self._tokened(message) else message.frame

    def _tokened(self, message: BusMessage) -> bool:
        """Whether ``message`` goes to this client behind its token."""
        return self.with_ids and not message.notice

    def gap_notice(self) -> bytes | None:
        """What tells this client that history lost messages: ``!gap`` for a resuming client, nothing for a plain one."""
        return GAP_NOTICE if self.with_ids else None

    def take_gap(self, history_gap: bool) -> bool:
        """Whether to tell the client of a gap before its backlog; clears the gap owed.

        A gap is there when history no longer holds all the client missed
        (``history_gap``, as the backlog's first page says) or when its
        token could not be read whole (:attr:`gap_owed`, told once). Only a
        resuming client is told (see :meth:`gap_notice`); the loop only sends.
        """
        gap = history_gap or self.gap_owed
        self.gap_owed = False
        return gap and self.gap_notice() is not None

    # -- stored messages and history --------------------------------------------------

    def fresh(self, messages: Iterable[BusMessage]) -> Iterator[BusMessage]:
        """Those of ``messages`` (stored or from history, in id order) not handed out yet, one at a time.

        Each is recorded as handed out when it is yielded, so :meth:`payload`
        called for it right then carries the token that includes it. A
        message older than the channel's position (a stored message
        published before the websocket arrived) is handed out without moving
        the position back, since what came between it and the arrival is not
        owed; it is remembered apart, as its live copy may still be on its
        way (the arrival is Redis's clock as this worker estimates it).

        A stored message without id (history off) whose copy already waits
        among the live ones is left out: it was published after the
        websocket subscribed, and stored by then. Without an id to tell them
        apart, an identical message published twice counts as one here.
        """
        for message in messages:
            if self._seen(message):
                self._advance(message)
            elif message.order is None and message.uid is None and self._waits(message):
                continue  # the client gets its live copy
            elif message.order is not None and message.order <= self.position(message.channel):  # type: ignore[arg-type]
                if self._stored is None:
                    self._stored = {}
                self._stored[message.channel] = message.order
                self._remember(message.uid)
                yield message
            else:
                self._record(message)
                yield message

    def owe_catch_up(self) -> None:
        """A catch-up from history is owed: live messages wait until it is done."""
        self.catch_up_owed = True
        self._caught_up = False

    def position(self, channel: str) -> Order:
        """Where the client is on ``channel``: a catch-up starts after it.

        The last id handed out there; before any, the position it resumed
        from; else the moment it arrived (ids follow Redis's clock), so that
        a websocket that opened while Redis was away gets what was published
        once it was back.
        """
        if self._positions is not None and channel in self._positions:
            return self._positions[channel]
        if self._resumed is not None and channel in self._resumed:
            return self._resumed[channel]
        return (self.arrived_ms, 0)

    def brought(self) -> frozenset[str]:
        """The channels whose position is still the one the client's token brought (nothing handed out there since)."""
        if self._resumed is None:
            return frozenset()
        handed_out = self._positions or {}
        return frozenset(c for c in self._resumed if c not in handed_out)

    def positions(self) -> dict[str, Order]:
        """:meth:`position` of every channel."""
        return {channel: self.position(channel) for channel in self.channels}

    def token(self) -> str:
        """The resume token for what was handed out so far (see :mod:`~ws4redis_uwsgi.core.positions`).

        It carries the uids of the last multi-channel and durable messages
        too: their copies on the client's other channels (or a durable
        message published again) may not have come by yet.
        """
        uids = tuple(reversed(list(islice(reversed(self._recent), TOKEN_UIDS)))) if self._recent else ()
        return _token(tuple([(channel, self.position(channel)) for channel in self.channels]), uids)

    def begin_catch_up(self) -> dict[str, Order]:
        """Start the owed catch-up (live messages wait until :meth:`end_catch_up`); returns where each channel starts."""
        self.catch_up_owed = False
        return self.positions()

    def end_catch_up(self, complete: bool) -> None:
        """The catch-up is over; if not ``complete`` (Redis refused), it is owed again."""
        self.catch_up_owed = self.catch_up_owed or not complete
        self._caught_up = not (self.catch_up_owed or self.overflowed)

    def _waits(self, message: BusMessage) -> bool:
        """Whether a live copy of ``message`` (same channel, same content) waits to be sent."""
        return self._inbox is not None and any(
            waiting.channel == message.channel and waiting.payload == message.payload and waiting.binary == message.binary
            for waiting in self._inbox
        )

    # -- positions ---------------------------------------------------------------------

    def _seen(self, message: BusMessage) -> bool:
        """Whether the client has ``message`` already (by its position in its channel, or its uid)."""
        order = message.order
        if order is not None:
            channel = message.channel
            if self._positions is not None and channel in self._positions:
                if order <= self._positions[channel]:
                    return True
            elif self._resumed is not None and channel in self._resumed and order <= self._resumed[channel]:
                return True
            elif self._stored is not None and channel in self._stored and order <= self._stored[channel]:
                return True  # the live copy of the stored message the websocket got first
        return message.uid is not None and self._recent is not None and message.uid in self._recent

    def _record(self, message: BusMessage) -> Order | None:
        """Record ``message`` as handed out; returns its channel's previous position (for :meth:`_unrecord`)."""
        order = message.order
        before = None
        if order is not None:
            if self._positions is None:
                self._positions = {}
            before = self._positions.get(message.channel)
            self._positions[message.channel] = order
        self._remember(message.uid)
        return before

    def _remember(self, uid: str | None) -> None:
        """Remember the uid of a message handed out, when a copy may come again.

        A websocket on one channel gets a multi-channel message once anyway
        (its id says so); a durable message it must know by its uid, since
        the outbox may publish it again.
        """
        if uid is not None and (len(self.channels) > 1 or is_durable_uid(uid)):
            if self._recent is None:
                self._recent = {}
            self._recent[uid] = None
            if len(self._recent) > RECENT_UIDS:
                del self._recent[next(iter(self._recent))]

    def _unrecord(self, message: BusMessage, before: Order | None) -> None:
        """Undo :meth:`_record`: the message was not written after all."""
        if message.order is not None and self._positions is not None:
            if before is None:
                self._positions.pop(message.channel, None)
            else:
                self._positions[message.channel] = before
        if message.uid is not None and self._recent is not None:
            self._recent.pop(message.uid, None)

    def _advance(self, message: BusMessage) -> None:
        """A copy of a message handed out on another channel: the client has it on this channel too."""
        order = message.order
        if order is not None and order > self.position(message.channel):  # type: ignore[arg-type]
            if self._positions is None:
                self._positions = {}
            self._positions[message.channel] = order

    def _is_new(self, message: BusMessage) -> bool:
        if self._seen(message):
            self._advance(message)
            return False
        self._record(message)
        return True


@functools.lru_cache(maxsize=TOKEN_CACHE)
def _token(positions: tuple[tuple[str, Order], ...], uids: tuple[str, ...]) -> str:
    """:func:`encode_token`, once for all the websockets that stand at the same positions."""
    return encode_token(positions, uids)
