"""Websockets that outlive their uWSGI request: what an idle websocket costs is its own state only.

A uWSGI request that stays open for a websocket's lifetime keeps, per
websocket: its async core (a ``struct wsgi_request`` of about 4 KiB, cleared
and so touched on use), the HTTP parser's ``buffer-size`` buffer, a page for
the response headers, a page for uWSGI's websocket reader, and the request's
greenlet, whose C stack slice (about 3.5 KiB) and Python frame chunk (a 4 KiB
page at least) are kept while it waits: about 30 KiB per idle websocket.

After the handshake none of that is needed. :class:`DetachedWebsocket` takes
a duplicate of the client socket's descriptor and the request ends at once:
uWSGI closes its own descriptor (the connection stays open on the
duplicate), frees the request's buffers and reuses the core and the greenlet
for the next handshake. The websocket is then served here with uWSGI's rules
and options (``websocket-max-size``, ``websocket-ping-freq``,
``websocket-pong-tolerance``): wsproto's frame layer parses what the client
sends, strictly (RFC 6455), and the server's frames are written as before;
and :class:`DetachedSession` serves it from event-loop callbacks: an io
watcher on the socket and the hub's wake-ups start a short greenlet that
takes one turn of the server's loop (:meth:`~ws4redis_uwsgi.server.loop.WebsocketWSGIServer.step`)
and ends. An idle websocket holds a few small Python objects and the kernel's
socket, about 2 KiB of the worker's memory.

uWSGI keeps a worker alive on reload only while requests run, so the server
closes its detached websockets (1012) from ``uwsgi.atexit`` and waits for
them there (see :class:`~ws4redis_uwsgi.server.uwsgi.uWSGIWebsocketServer`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

import gevent
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from ..core.close_codes import violation
from ..core.envelope import outgoing
from ..core.exceptions import SlowConsumerError, WebSocketError
from ..core.frames import MessageSizeLimit, server_frame
from ..core.inbound import InboundPolicy, Verdict
from ..core.keepalive import KeepAlive, keep_alive
from . import limits
from .adapter import close_for_rule
from .limits import CLOSE_TIMEOUT, FRAMES_PER_CALL, READ_SIZE, UWSGI_MAX_SIZE_KIB
from .session import Session, Turn
from .sockets import RawSocket, close_descriptor

if TYPE_CHECKING:
    from ..bus.subscriber import RedisSubscriber
    from .adapter import LoopServer

logger = logging.getLogger("ws4redis_uwsgi")

_PING = b"\x89\x00"
#: A pong from a client: FIN and opcode 0xA, then the mask bit with a length of at most 125.
_PONG = 0x8A
#: Seconds by which a websocket is due for keep-alive before its rule says so, against rounding in
#: the rule's differences of floats: earlier only costs a visit that decides nothing.
KEEPALIVE_SLACK = 1e-3


class DetachedWebsocket(RawSocket):
    """One websocket on its own descriptor of the client socket, framed here, not by uWSGI.

    Written to and closed by the socket layer (:class:`~ws4redis_uwsgi.server.sockets.RawSocket`,
    as websockets that stay in their request are). What the client
    sends is parsed by wsproto's frame layer (:class:`wsproto.frame_protocol.FrameProtocol`),
    made on the first bytes the client sends and dropped again whenever it holds nothing
    (between frames), so an idle websocket does not keep one. Pings are answered, pongs
    recorded, a close frame or the end of the connection ends the websocket, a message
    whose frame headers announce more than ``max_size`` is refused with 1009 before its
    payload is read (where uWSGI just dropped the connection), and anything RFC 6455 says
    must fail the connection (an unmasked frame, a reserved bit, an unknown opcode, a
    broken fragmented message, invalid UTF-8 in a text message, ...) closes it with the
    code wsproto gives (1002, 1007). Pings and pongs count against the client's rate
    limit (:attr:`inbound`, set by the loop), as its messages do. One :meth:`receive`
    reads the socket at most once, so a client that sends without pause cannot keep
    the worker to itself.
    """

    __slots__ = (
        "_awaiting_pong",
        "_dead",
        "_last_ping",
        "_more",
        "_parts",
        "_parts_size",
        "_protocol",
        "inbound",
        "max_size",
    )

    def __init__(self, fd: int, max_size: int = UWSGI_MAX_SIZE_KIB * 1024, send_buffer: int | None = None) -> None:
        # The descriptor is ours, not the request's: uWSGI closes its own when the request ends.
        super().__init__(fd, send_buffer)
        self.max_size = max_size
        self._protocol: FrameProtocol | None = None  # only while the client's bytes are being parsed
        self._parts: list[bytes] | None = None  # the parts of an unfinished message
        self._parts_size = 0
        # As uWSGI: the first ping ping_freq after the handshake, so a reconnect
        # storm is not pinged (and does not answer) all at once a moment later.
        self._last_ping = time.monotonic()
        self._awaiting_pong = False
        self._dead = False  # set by keep_alive(): the client did not answer a ping
        self._more = False  # frames left in the parser for the next receive()
        #: The client's limits; pings and pongs are counted against its rate.
        self.inbound: InboundPolicy | None = None

    def receive(self) -> bytes | None:
        """The next message the client sent, or ``None`` when none is complete; never waits.

        Reads the socket once at most: a client that sent more is read on the
        next call (the socket stays readable, so its loop takes another turn).
        """
        if self.closed:
            raise WebSocketError("websocket is closed")
        if self._dead:
            raise WebSocketError("no answer to ping")
        self._finish_pending()
        if self._protocol is not None:
            message = self._next_message(self._protocol)
            if message is not None or self.closed or self._more:
                return message  # with frames left over, read no more until they are done
        if not self._fill() or self._protocol is None:
            return None
        return self._next_message(self._protocol)

    def send(self, message: bytes | str, binary: bool | None = None) -> None:
        if self.closed:
            raise WebSocketError("websocket is closed")
        message, binary = outgoing(message, binary)
        self._send_frame(server_frame(message, binary))

    def keep_alive(self, now: float, ping_freq: float, pong_tolerance: float) -> bool:
        """uWSGI's ping rule (:mod:`~ws4redis_uwsgi.core.keepalive`), called every few seconds.

        :returns: False once the client failed to answer a ping.
        """
        if self.closed or self._dead:
            return True
        action = keep_alive(now, self._last_ping, self._awaiting_pong, ping_freq, pong_tolerance)
        if action is KeepAlive.GONE:
            self._dead = True
            return False
        if action is KeepAlive.PING and self.try_write(_PING):
            self._last_ping = now
            self._awaiting_pong = True
        return True

    def keepalive_due(self, ping_freq: float, pong_tolerance: float) -> float | None:
        """The earliest time at which :meth:`keep_alive` may act on this websocket, as it is now; None: never again.

        A lower bound, whatever happens meanwhile: only :meth:`keep_alive` pings
        (and so moves the time of the last ping and starts waiting for a pong),
        and a pong that comes puts the next action later, not earlier (the next
        ping is ``ping_freq`` after the last, the end ``pong_tolerance`` after
        it, so whichever comes first while a pong is awaited).
        """
        if self.closed or self._dead:
            return None
        wait = min(ping_freq, pong_tolerance) if self._awaiting_pong else ping_freq
        return self._last_ping + wait - KEEPALIVE_SLACK

    @property
    def awaiting_pong(self) -> bool:
        """Whether a keep-alive ping went out that no pong answered yet."""
        return self._awaiting_pong

    def take_pong(self, charge: bool = True) -> bool:
        """Read what the client sent when it is a pong alone, and record it without a turn of the loop.

        Why: a keep-alive round pings every idle websocket once per ``ping_freq``;
        a turn for each pong (a greenlet, a frame parser, a turn of the loop)
        cost most of what keep-alive costs a worker. Called when the socket of
        an idle websocket becomes readable. True when what was read was one
        whole pong, allowed by the client's rate (:attr:`inbound`, which must be
        set, unless ``charge`` is False: the answer to our own ping that a fresh
        policy would let pass): then nothing is left to do. False otherwise, and a turn must
        follow: what was read (anything else) is in the frame parser, which
        the turn's :meth:`receive` empties before it reads more, so it acts as
        if it had read those bytes itself; and nothing at all is read while the
        websocket has a parser, a write under way or is closed.
        """
        inbound = self.inbound
        if charge and inbound is None:
            return False
        if self._protocol is not None or self.closed or self._dead or self._pending or self._busy:
            return False
        try:
            data = os.read(self._fd, READ_SIZE)
        except OSError:  # nothing to read after all, or the connection failed: the turn finds out
            return False
        if not data:  # the end of the connection: the turn reads it again
            return False
        length = data[1] & 0x7F if len(data) > 1 else 126
        if data[0] == _PONG and data[1] & 0x80 and length <= 125 and len(data) == 6 + length:
            if not charge or (inbound is not None and inbound.allow_frame(time.monotonic())):
                self._awaiting_pong = False
                return True
        self._feed(data)  # anything else (or a pong past the rate): the turn acts on it
        return False

    def dispose(self) -> None:
        """Close this websocket's descriptor; after :meth:`close`, once nothing waits on it any more."""
        super().dispose()
        self._reset()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                close_descriptor(fd)  # its session stopped its watcher first
            except OSError:
                pass

    # -- inside ------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Hand what the socket holds to the frame parser; False when nothing waits. The end of the connection raises."""
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            raise WebSocketError("websocket closed by the client") from None
        if not data:
            raise WebSocketError("websocket closed by the client")
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        """Hand bytes the client sent to the frame parser (made for them when there is none)."""
        if self._protocol is None:
            self._protocol = FrameProtocol(client=False, extensions=[MessageSizeLimit(self.max_size)])
        self._protocol.receive_bytes(data)

    def _next_message(self, protocol: FrameProtocol) -> bytes | None:
        """Act on the frames parsed so far; the first message they complete, if any.

        At most :data:`FRAMES_PER_CALL` frames per call: the rest stays in the
        parser, :attr:`pending` says so, and the loop takes another turn later.
        The pongs of the pings handled go out in one write.
        """
        self._more = False
        pongs: list[bytes] = []
        try:
            for handled, frame in enumerate(protocol.received_frames(), start=1):
                if frame.opcode is Opcode.PING and isinstance(frame.payload, bytes):
                    if not self._allow_frame():
                        self._send_pongs(pongs)  # the pings within the rate are answered
                        self._refuse(Verdict.TOO_FAST)
                        return None
                    pongs.append(bytes(protocol.pong(frame.payload)))
                else:
                    if pongs:  # answered before anything that comes after them, a close included
                        self._send_pongs(pongs)
                    # Data frames come out as they arrive, in parts, continuations with their
                    # message's opcode and a text message's parts decoded; control frames whole.
                    payload = frame.payload
                    if isinstance(payload, tuple):  # a close frame: (code, reason)
                        self._answer_close(protocol, payload[0])
                    elif frame.opcode is Opcode.PONG:
                        if not self._allow_frame():
                            self._refuse(Verdict.TOO_FAST)
                            return None
                        self._awaiting_pong = False
                    else:
                        part = payload.encode("utf-8") if isinstance(payload, str) else payload
                        message = self._add_part(part, frame.message_finished)
                        if message is not None or self.closed:
                            return message
                if handled >= FRAMES_PER_CALL:
                    self._more = True
                    return None
        except ParseFailed as exc:
            self._send_pongs(pongs)
            self._violation(exc)
        finally:
            self._send_pongs(pongs)
        self._release_at_rest(protocol)
        return None

    def _send_pongs(self, pongs: list[bytes]) -> None:
        if pongs and not self.closed:
            self._send_frame(b"".join(pongs))
        pongs.clear()

    @property
    def pending(self) -> bool:
        """Whether the parser holds frames a call to :meth:`receive` left for the next one."""
        return self._more

    def _add_part(self, part: bytes, finished: bool) -> bytes | None:
        """Keep a part of a message; the message once ``finished``. Past ``max_size`` the websocket closes (1009)."""
        size = self._parts_size + len(part)
        if size > self.max_size:
            self._refuse(Verdict.TOO_BIG)
            return None
        if not finished:
            if self._parts is None:
                self._parts = []
            self._parts.append(part)
            self._parts_size = size
            return None
        if self._parts is not None:
            self._parts.append(part)
            part = b"".join(self._parts)
            self._parts, self._parts_size = None, 0
        if self._protocol is not None:
            self._release_at_rest(self._protocol)
        return part

    def _release_at_rest(self, protocol: FrameProtocol) -> None:
        """Drop the parser while it holds nothing: no message under way, no frame begun, no bytes unread.

        wsproto has no public call for that; should its decoder state ever
        look different, the parser is kept (correct, only larger).
        """
        if self._parts is not None or self._protocol is not protocol:
            return
        try:
            decoder = protocol._frame_decoder
            at_rest = decoder.header is None and len(decoder.buffer) == 0
        except AttributeError:
            return
        if at_rest:
            self._drop_parser()

    def _drop_parser(self) -> None:
        """Forget the parser and free it now.

        A FrameProtocol holds the generator that parses for it, and that
        generator holds it: a reference cycle that only the garbage collector
        would free, so that a thousand clients answering a ping at once would
        leave a thousand parsers waiting for it. Closing the generator breaks
        the cycle.
        """
        protocol, self._protocol = self._protocol, None
        parse_more = getattr(protocol, "_parse_more", None)
        if parse_more is not None:
            parse_more.close()

    def _answer_close(self, protocol: FrameProtocol, code: int) -> None:
        """Answer the client's close frame with its code (none when it sent none); the connection then ends."""
        try:
            self._send_frame(bytes(protocol.close(code)), timeout=CLOSE_TIMEOUT)
        finally:
            self.closed = True
            self._reset()
        raise WebSocketError("websocket closed by the client")

    def _violation(self, exc: ParseFailed) -> None:
        """The client broke RFC 6455: close with wsproto's code, and end the websocket."""
        self._reset()
        close_for_rule(self, *violation(exc.code), detail=exc)
        raise WebSocketError(f"websocket closed for a protocol error ({exc.code:d})") from None

    def _allow_frame(self) -> bool:
        """Count a ping or pong against the client's rate; False past it."""
        inbound = self.inbound
        return inbound is None or inbound.allow_frame(time.monotonic())

    def _refuse(self, verdict: Verdict) -> None:
        """Close for a limit the client broke (its code and reason are the verdict's)."""
        self._reset()
        close_for_rule(self, *verdict.value)

    def _reset(self) -> None:
        self._drop_parser()
        self._parts, self._parts_size = None, 0

    def _send_frame(self, frame: bytes, timeout: float | None = None) -> None:
        try:
            self.send_frame(frame, limits.SEND_TIMEOUT if timeout is None else timeout)
        except SlowConsumerError:
            self._reset()
            raise


class _State(Enum):
    """Where a detached websocket's loop is."""

    IDLE = "idle"  # no greenlet: the event loop or the hub wakes it
    RUNNING = "running"  # a greenlet takes a turn
    AGAIN = "again"  # woken during the turn (or the client sent more than a turn takes): another turn follows
    DONE = "done"  # ended


class DetachedSession(Session):
    """Serves one detached websocket without a greenlet of its own while it is idle.

    The socket's io watcher, the hub (through ``subscriber.notify``) and the
    server's shutdown call :meth:`wake`; a wake-up starts a greenlet that
    takes turns (:meth:`Session.turn`) until nothing new arrived during one,
    then ends. At most one such greenlet runs per websocket.
    """

    __slots__ = ("_keepalive", "_sessions", "_state", "_watcher", "keepalive_key")

    def __init__(
        self,
        server: LoopServer,
        websocket: DetachedWebsocket,
        subscriber: RedisSubscriber,
        path: str,
        sessions: set[DetachedSession],
        keepalive: KeepAliveWheel | None = None,
    ) -> None:
        super().__init__(server, websocket, subscriber, path)
        self._sessions = sessions  # the server's live sessions, this one among them until it ends
        self._keepalive = keepalive  # where the server schedules this websocket's keep-alive; left when it ends
        #: The bucket of :class:`KeepAliveWheel` this session is in (None: in none).
        self.keepalive_key: int | None = None
        self._watcher: Any = None
        self._state = _State.RUNNING

    def start(self) -> None:
        """In the request's greenlet: send what the websocket gets first, then leave it to the event loop.

        Whatever happens here (the client gone, Redis away, an error), the
        websocket either is left to the event loop or ends in :meth:`_finish`.
        """
        self._sessions.add(self)
        self.subscriber.attach(self.wake)
        handed_over = False
        try:
            if not self.open(self):
                return
            self._watcher = gevent.get_hub().loop.io(self.websocket.get_file_descriptor(), 1)
            self._watcher.start(self._on_readable)
            if self._state is _State.AGAIN or self.server.stopping:  # woken while starting
                self._state = _State.RUNNING
                gevent.spawn(self._run)
            else:
                self._state = _State.IDLE
            handed_over = True
        finally:
            if not handed_over:
                self._finish()

    def wake(self) -> None:
        """Have the loop take a turn soon (from any greenlet or callback)."""
        if self._state is _State.IDLE:
            self._state = _State.RUNNING
            gevent.spawn(self._run)
        elif self._state is _State.RUNNING:
            self._state = _State.AGAIN

    # -- inside ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._state is _State.IDLE:
            # Mostly the pong to a keep-alive ping: taken here, in the event loop's callback,
            # without a greenlet or a turn (see DetachedWebsocket.take_pong).
            websocket: DetachedWebsocket = self.websocket  # type: ignore[assignment]
            if websocket.awaiting_pong and (self.inbound is None or self.inbound.rested(time.monotonic())):
                # The answer to our ping from a client that sent nothing else for a while: a policy
                # made anew would let it pass (at most once per ping), so none is made; the client
                # holds none until it sends again, when the turn makes one that judges the same.
                if websocket.take_pong(charge=False):
                    self.inbound = websocket.inbound = None
                    return
            else:
                self.inbound_policy()
                if websocket.take_pong():
                    return
        else:
            # Readable until read: pause the watcher until the running turn is over.
            self._watcher.stop()
        self.wake()

    def _run(self) -> None:
        finished = True
        try:
            while self.live:
                self._state = _State.RUNNING
                turn = self.turn()
                if turn is Turn.END:
                    return
                if turn is Turn.MORE:
                    self._state = _State.AGAIN
                if self._state is _State.RUNNING and self.live:
                    self._state = _State.IDLE  # nothing arrived during the turn
                    if not self._watcher.active:
                        self._watcher.start(self._on_readable)
                    finished = False
                    return
                # Another turn is due: let the other websockets and the hub have theirs first.
                gevent.sleep(0)
            self.close_if_stopping()
        finally:
            if finished:
                self._finish()

    def _finish(self) -> None:
        """End the websocket: its slot, channels, watcher and descriptor; once, whatever happened before."""
        if self._state is _State.DONE:
            return
        self._state = _State.DONE
        self._sessions.discard(self)
        if self._keepalive is not None:
            self._keepalive.cancel(self)
        try:
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher.close()
                self._watcher = None
        finally:
            self.end()


class KeepAliveWheel:
    """The detached websockets of a worker, by the keep-alive round in which each is next due.

    Why: the worker's keep-alive round (every ``KEEPALIVE_ROUND`` seconds)
    asked every websocket whether a ping or the end was due; with 100,000
    websockets that was 100,000 calls every 5 s (about 3% of a core) mostly
    to hear "nothing", when each is due once per ``ping_freq``. Here each
    session sits in the bucket of the ``period`` its due time falls in
    (:meth:`DetachedWebsocket.keepalive_due`), and a round visits only the
    buckets whose period has begun. The decisions stay those of uWSGI's rule
    (:meth:`DetachedWebsocket.keep_alive` decides for every websocket
    visited, and a visited one goes back by its new due time): a websocket is
    left out only while the rule would decide nothing for it, since its due
    time is a lower bound. A session leaves its bucket when it ends
    (:meth:`cancel`), so nothing here keeps an ended websocket alive.
    """

    __slots__ = ("_buckets", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self._buckets: dict[int, set[DetachedSession]] = {}

    def schedule(self, session: DetachedSession, due: float | None) -> None:
        """Put ``session`` in the bucket of ``due`` (out of the wheel when None), out of the one it was in."""
        self.cancel(session)
        if due is None:
            return
        key = math.floor(due / self.period)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
        bucket.add(session)
        session.keepalive_key = key

    def cancel(self, session: DetachedSession) -> None:
        """Take ``session`` out of the wheel, if it is in."""
        key, session.keepalive_key = session.keepalive_key, None
        bucket = self._buckets.get(key) if key is not None else None
        if bucket is not None:
            bucket.discard(session)
            if not bucket:
                del self._buckets[key]  # type: ignore[arg-type]

    def take_due(self, now: float) -> list[DetachedSession]:
        """The sessions whose bucket's period began by ``now``, taken out: every one due by then is among them."""
        limit = math.floor(now / self.period)
        taken: list[DetachedSession] = []
        for key in [key for key in self._buckets if key <= limit]:
            for session in self._buckets.pop(key):
                session.keepalive_key = None
                taken.append(session)
        return taken

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())
