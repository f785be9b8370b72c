"""One Redis subscription per worker process, fanned out to its websockets.

However many websockets a worker serves, it holds one pub/sub connection:
the hub subscribes to a channel when its first listener arrives, counts the
listeners, unsubscribes when the last one leaves, and hands every message to
the listeners of its channel in-process. It waits on file descriptors
through gevent's event loop (epoll), never ``select()``, so it works past
fd 1024. When Redis goes away it reconnects with jittered exponential
backoff and re-subscribes; the websockets stay open meanwhile, and each one
whose channels were down (or that opened meanwhile) is told to catch up from
history once its subscriptions are back (``Listener.resync``).

Per-channel state (listeners, confirmations, pending catch-ups) exists only
for channels with listeners, so nothing grows with channels that were left,
whether Redis was up or down when they were.

This module is the gevent adapter of the bus; the decisions about what a
message is live in :mod:`ws4redis_uwsgi.core.envelope`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import gevent
import redis
from gevent.event import Event

from ..core import envelope
from ..core.text import loggable

logger = logging.getLogger("ws4redis_uwsgi.bus.hub")

#: Messages the hub hands out before it lets the websockets run.
DRAIN_BATCH = 64
#: Seconds between two log lines about messages the hub dropped (a flood logs a count).
DROP_LOG_INTERVAL = 10.0


class Listener(Protocol):
    def deliver(self, message: envelope.BusMessage) -> None: ...
    def resync(self) -> None: ...


class FdWaiter:
    """Wait until a file descriptor is readable or :meth:`wake` is called.

    Uses a gevent io watcher (epoll through libev), which has no limit on fd
    numbers, and one event that both the watcher and other greenlets set.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._event = Event()
        self._watcher: Any = None
        if fd is not None:
            self.watch(fd)

    def watch(self, fd: int) -> None:
        self.unwatch()
        self._watcher = gevent.get_hub().loop.io(fd, 1)
        self._watcher.start(self._event.set)

    def unwatch(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block this greenlet until woken or readable; False on timeout."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    close = unwatch


class SubscriptionHub:
    """The worker's single pub/sub connection and its in-process fan-out."""

    def __init__(
        self,
        client_factory: Callable[[], redis.Redis],
        *,
        ping_interval: float = 15.0,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._client_factory = client_factory
        self.ping_interval = ping_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._listeners: dict[str, set[Listener]] = {}
        self._subscribed: set[str] = set()  # SUBSCRIBE sent on the current connection
        self._confirmed: dict[str, Event] = {}  # set once Redis confirmed the subscription
        # Channels whose listeners must catch up from history once they are subscribed
        # again: they had listeners when the connection was lost, or got them meanwhile.
        self._resync: set[str] = set()
        self._waiter = FdWaiter()
        self._greenlet: gevent.Greenlet | None = None
        self._backoff = min_backoff
        #: How many times the subscription connection was lost; for tests and metrics.
        self.disconnects = 0
        self.connected = False
        #: Redis's clock minus this process's (seconds), measured at every connection.
        self.clock_offset = 0.0
        self._dropped = 0
        self._dropped_logged = 0.0

    # -- the API websockets use -------------------------------------------------

    def add(self, listener: Listener, channels: Iterable[str]) -> None:
        for channel in channels:
            self._listeners.setdefault(channel, set()).add(listener)
            if self.disconnects and not self.connected:
                self._resync.add(channel)  # opened while Redis is away: catch up once it is back
        self._ensure_running()
        self._waiter.wake()

    def remove(self, listener: Listener, channels: Iterable[str]) -> None:
        for channel in channels:
            listeners = self._listeners.get(channel)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[channel]
                    self._resync.discard(channel)
                    if channel not in self._subscribed:
                        # Subscribed channels lose theirs when _sync unsubscribes them.
                        self._confirmed.pop(channel, None)
        self._waiter.wake()

    def wait_subscribed(self, channels: Iterable[str], timeout: float) -> bool:
        """Wait until Redis confirmed the subscription of every channel; False on timeout.

        On timeout the listeners of the channels not yet confirmed are told to
        catch up (``resync``) once they are: what is published meanwhile is in history.
        """
        deadline = time.monotonic() + timeout
        channels = list(channels)
        for channel in channels:
            if channel not in self._listeners:
                return False  # only listeners wait, and this one left
            event = self._confirmed.setdefault(channel, Event())
            if not event.wait(max(0.0, deadline - time.monotonic())):
                self._resync.update(c for c in channels if c in self._listeners and not self.confirmed([c]))
                return False
        return True

    def confirmed(self, channels: Iterable[str]) -> bool:
        """Whether Redis confirmed the subscription of every one of ``channels`` on the current connection."""
        for channel in channels:
            event = self._confirmed.get(channel)
            if event is None or not event.is_set():
                return False
        return True

    def redis_now_ms(self) -> int:
        """Redis's clock now, in ms, as measured at the last connection: what new message ids are near."""
        return int((time.time() + self.clock_offset) * 1000)

    def channel_state_size(self) -> int:
        """Entries of per-channel state the hub holds; at most a few per channel with listeners (for tests)."""
        return len(self._listeners) + len(self._subscribed) + len(self._confirmed) + len(self._resync)

    def close(self) -> None:
        """Stop the subscription loop (its connection closes with it); for a process that forgets its hub."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self._waiter.unwatch()

    # -- the subscription loop --------------------------------------------------

    def _ensure_running(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            pubsub = None
            try:
                if not self._listeners:
                    self._waiter.wait(None)
                    continue
                client = self._client_factory()
                self._measure_clock(client)
                pubsub = client.pubsub()  # on the connection TIME just used
                self._serve(pubsub)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.disconnects += 1
                logger.warning("Redis subscription lost (%s); reconnecting in %.2fs", exc, self._backoff)
            except Exception:
                self.disconnects += 1
                logger.exception("Redis subscription failed; reconnecting in %.2fs", self._backoff)
            finally:
                self._on_disconnect(pubsub)
            gevent.sleep(self._backoff * random.uniform(0.5, 1.0))
            self._backoff = min(self._backoff * 2, self.max_backoff)

    def _measure_clock(self, client: redis.Redis) -> None:
        """Redis's clock against this process's: message ids follow Redis's, and new websockets start from it."""
        before = time.time()
        seconds, microseconds = client.time()
        after = time.time()
        self.clock_offset = seconds + microseconds / 1e6 - (before + after) / 2

    def _on_disconnect(self, pubsub: Any) -> None:
        self.connected = False
        self._waiter.unwatch()
        self._subscribed.clear()
        self._resync.update(self._listeners)
        for channel in [c for c in self._confirmed if c not in self._listeners]:
            del self._confirmed[channel]
        for event in self._confirmed.values():
            event.clear()
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # the connection is gone already
                pass

    def _serve(self, pubsub: Any) -> None:
        self._sync(pubsub)  # the first SUBSCRIBE opens the connection
        connection = pubsub.connection
        # redis-py offers no public accessor for the socket; ws4redis used the same.
        self._waiter.watch(connection._sock.fileno())
        self.connected = True
        self._backoff = self.min_backoff
        logger.info("Redis subscription connected (pid %d)", os.getpid())
        ping_pending = False
        while True:
            if self._drain(pubsub, connection):
                ping_pending = False
            self._sync(pubsub)
            if self._waiter.wait(self.ping_interval):
                continue
            # Idle for a whole interval: make sure the connection is still alive.
            if ping_pending:
                raise redis.ConnectionError("no answer to PING")
            if pubsub.subscribed:
                pubsub.ping()
                ping_pending = True

    def _sync(self, pubsub: Any) -> None:
        """Bring the Redis subscription in line with the channels that have listeners."""
        wanted = set(self._listeners)
        new = wanted - self._subscribed
        gone = self._subscribed - wanted
        if new:
            self._subscribed |= new
            pubsub.subscribe(*sorted(new))
        if gone:
            self._subscribed -= gone
            for channel in gone:
                event = self._confirmed.pop(channel, None)
                if event is not None:
                    event.clear()
            pubsub.unsubscribe(*sorted(gone))

    def _drain(self, pubsub: Any, connection: Any) -> int:
        """Handle every message redis-py has buffered or the socket holds; the count handled.

        Reading only after ``can_read`` says a reply is there, and then
        reading it whole, means a message split across TCP segments is never
        cut short by a zero timeout.
        """
        count = 0
        while connection.can_read(timeout=0):
            response = pubsub.parse_response(block=True)
            if response is None:
                continue
            count += 1
            self._handle(pubsub.handle_message(response))
            if count % DRAIN_BATCH == 0:
                # Let the websockets send what they got before handing out more,
                # or a burst would fill every inbox while nobody writes.
                gevent.sleep(0)
        return count

    def _handle(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        kind = message["type"]
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if kind == "message":
            listeners = self._listeners.get(channel)  # type: ignore[arg-type]
            if listeners:
                bus_message = self.accept(message["data"], channel)
                if bus_message is None:
                    return
                for listener in tuple(listeners):
                    listener.deliver(bus_message)
        elif kind == "subscribe" and channel in self._subscribed and channel in self._listeners:
            self._confirmed.setdefault(channel, Event()).set()  # type: ignore[arg-type]
            if channel in self._resync:
                # Messages may have gone by while the subscription was down.
                self._resync.discard(channel)  # type: ignore[arg-type]
                for listener in tuple(self._listeners[channel]):  # type: ignore[index]
                    listener.resync()

    def accept(self, data: bytes | str, channel: Any) -> envelope.BusMessage | None:
        """The message ``data`` (from ``channel``, live or stored) carries, or None when nobody may receive it.

        The one rule for messages this package did not publish: bytes that
        imitate its wrapping, and ids too far ahead of Redis's clock (trusted,
        such an id would make every later message look old to the clients
        that got it), are dropped with a log line.
        """
        try:
            message = envelope.decode(data)
        except envelope.MalformedMessageError as exc:
            self.drop(channel, str(exc))
            return None
        return message if self.trusted(message, channel) else None

    def trusted(self, message: envelope.BusMessage, channel: Any) -> bool:
        """False, with a log line, for a message whose id is too far ahead of Redis's clock."""
        order = message.order
        if order is not None and not envelope.plausible_id(order, self.redis_now_ms()):
            self.drop(channel, f"id {message.id} far ahead of Redis's clock")
            return False
        return True

    def drop(self, channel: Any, reason: str) -> None:
        """Drop a message nobody may receive; log it, at most once per DROP_LOG_INTERVAL."""
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged >= DROP_LOG_INTERVAL:
            logger.warning(
                "dropped %d message(s) on the bus that this package did not publish; the last on %s: %s",
                self._dropped,
                loggable(channel),
                reason,
            )
            self._dropped, self._dropped_logged = 0, now
