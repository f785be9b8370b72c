"""One Redis subscription per worker process and shard, fanned out to its websockets.

However many websockets a worker serves, it holds one pub/sub connection per
shard: one with a standalone Redis or Sentinel (``SUBSCRIBE``), one per
master with a Cluster (``SSUBSCRIBE``, so a message reaches only the shard
that owns its channel). The hub subscribes to a channel when its first
listener arrives, counts the listeners, unsubscribes when the last one
leaves, and hands every message to the listeners of its channel in-process.
It waits on file descriptors through gevent's event loop (epoll), never
``select()``, so it works past fd 1024.

When a connection is lost (Redis restarted, a Sentinel or Cluster failover)
it reconnects with jittered exponential backoff, to wherever the channels
live now (a Sentinel asks for the master again; a Cluster reads its slots
again, also when a slot migrates away: Redis then ends the shard
subscription with ``sunsubscribe``), and re-subscribes. The websockets stay
open meanwhile, and each one whose channels were down (or that opened
meanwhile) is told to catch up from history once its subscriptions are back
(``Listener.resync``).

A channel whose last websocket closed stays subscribed for ``linger``
seconds (``WS4REDIS_CHANNEL_LINGER``, ``remove(..., linger=True)``): a browser going to
another page of the site opens its next websocket on the same channels
(its user's, its session's) a moment later, which then subscribes nothing
and, no message having passed meanwhile, reads no stored message from
Redis either (:mod:`.batched_reader`). A channel left for another reason (a
group the user left) goes at once.

A link sends what changed at once when it sent nothing for
:data:`SUBSCRIBE_INTERVAL` (2 ms), else at the end of those 2 ms, together
with whatever else came meanwhile: a burst of first visits, each with a
channel of its own, shares its ``SUBSCRIBE`` commands, their replies and
the wake-ups that follow, and a lone handshake waits for nothing.

A channel's first subscription also reads its stored message, in the same
round trip, where the connection speaks RESP3 (``read_stored``, not on a
Cluster: see :mod:`.subscription`): the handshake that subscribed it, a user's
first visit, then reads it from the hub (:meth:`SubscriptionHub.preread`)
instead of asking Redis once more.

Per-channel state (listeners, routes, confirmations, pending catch-ups)
exists only for channels with listeners, or left less than ``linger``
seconds ago, so nothing grows with channels that were left,
whether Redis was up or down when they were.

This module is the gevent adapter of the bus; the decisions about what a
message is live in :mod:`ws4redis_uwsgi.core.envelope`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import gevent
import redis
from gevent.event import Event

from ..core import envelope
from ..core.text import loggable
from ..core.throttle import Throttle
from .connection import MASTER_CHECK_INTERVAL
from .fanout import deliver_all
from .shards import Shards, SingleShard
from .subscription import Reply, Subscription, open_subscription

logger = logging.getLogger("ws4redis_uwsgi.bus.hub")

#: Messages the hub hands out before it lets the websockets run.
DRAIN_BATCH = 64
#: Deliveries (a message times its listeners) after which the hub lets the rest of the worker run
#: (handshakes, the websockets' turns), whatever the count of messages: with 10,000 websockets on
#: a channel, 64 messages held the event loop for seconds and the worker accepted no connection.
DRAIN_DELIVERIES = 10_000
#: Seconds a link holds the subscriptions that come after those it just sent, to send them together.
#: The first after a quiet while goes at once; in a burst of first visits, each with a channel of its
#: own (its user's), a SUBSCRIBE, its replies and the handshakes' wake-ups per handshake cost more
#: than a third of the handshake (bench/README.md); held 2 ms, they come about a dozen to a command.
SUBSCRIBE_INTERVAL = 0.002
#: Seconds between two log lines about messages the hub dropped (a flood logs a count).
DROP_LOG_INTERVAL = 10.0
#: Round trips to Redis's TIME when a connection opens; the quickest measures the clock offset.
CLOCK_SAMPLES = 3
#: Seconds between two measures of a Redis's clock prompted by ids that look too far ahead of it:
#: a genuine one (that Redis's clock stepped, or drifted from this host's) is delivered after one
#: more round trip, and a flood of forged ones costs a round trip a second.
CLOCK_RECHECK_INTERVAL = 1.0


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
    """The worker's pub/sub connections (one per shard) and its in-process fan-out."""

    def __init__(
        self,
        client_factory: Callable[[], redis.Redis] | Shards,
        *,
        ping_interval: float = 15.0,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
        linger: float = 0.0,
        read_stored: bool = False,
    ) -> None:
        # A bare factory (tests) is one Redis.
        self._shards: Shards = client_factory if not callable(client_factory) else SingleShard(client_factory)
        self.ping_interval = ping_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        #: Seconds a channel left with ``remove(..., linger=True)`` stays subscribed (0: none).
        self.linger = linger
        #: Whether a channel's first subscription also reads its stored message, in the same round trip
        #: (where Redis speaks RESP3; see bus/subscription.py): the handshake that subscribed it then reads none.
        self.read_stored = read_stored
        # Those values by channel, with the channel's stamp and when they were read (see preread()).
        self._prereads: dict[str, tuple[int, Any, float]] = {}
        self._listeners: dict[str, set[Listener]] = {}
        self._route: dict[str, _Link] = {}  # the link that subscribes each channel with listeners
        self._links: dict[str, _Link] = {}
        self._unrouted: set[str] = set()  # channels waiting for the Cluster's slot map
        # Channels whose subscription Redis confirmed on their current connection, and an Event for
        # each unconfirmed one a handshake waits for: none for the many channels nobody waits on,
        # whose Event (and its list of links) the collector would walk for as long as they live.
        self._confirmed: set[str] = set()
        self._waiting: dict[str, Event] = {}
        # A number per confirmed channel, new whenever a message on it passed (see stamp()).
        self._stamps: dict[str, int] = {}
        self._next_stamp = itertools.count(1).__next__
        # Channels whose listeners must catch up from history once they are subscribed
        # again: they had listeners when their connection was lost, or got them meanwhile.
        self._resync: set[str] = set()
        # Channels without listeners kept subscribed until their deadline (monotonic), oldest first;
        # their listener sets stay, empty.
        self._idle: dict[str, float] = {}
        self._sweeper: gevent.Greenlet | None = None
        self._refresher: gevent.Greenlet | None = None
        self._refresh_backoff = min_backoff
        #: How many times a subscription connection was lost; for tests and metrics.
        self.disconnects = 0
        #: Messages handed to listeners (one per listener), and those a listener had to queue (metrics).
        self.deliveries = 0
        self.queued = 0
        #: Redis's clock minus this process's (seconds), as last measured on any link (each link keeps its own).
        self.clock_offset = 0.0
        self._drops = Throttle(DROP_LOG_INTERVAL)

    # -- the API websockets use -------------------------------------------------

    def add(self, listener: Listener, channels: Iterable[str]) -> None:
        for channel in channels:
            listeners = self._listeners.setdefault(channel, set())
            listeners.add(listener)
            if len(listeners) == 1 and self._idle.pop(channel, None) is None:  # a lingering one is subscribed
                self._assign(channel)
            link = self._route.get(channel)
            if self.disconnects and (link is None or not link.connected):
                self._resync.add(channel)  # opened while Redis is away: catch up once it is back

    def remove(self, listener: Listener, channels: Iterable[str], linger: bool = False) -> None:
        """``listener`` leaves ``channels``; with ``linger``, a channel it was the last listener of stays a while.

        ``linger`` is for a websocket that closes (see the module docstring).
        """
        for channel in channels:
            listeners = self._listeners.get(channel)
            if listeners is None or listener not in listeners:
                continue  # not its listener: nothing changes (a lingering channel keeps its deadline)
            listeners.remove(listener)
            if listeners:
                continue
            if linger and self.linger > 0 and channel in self._route:
                # Not lingering yet (it had a listener): appended, so _idle stays in deadline order.
                self._idle[channel] = time.monotonic() + self.linger
                if self._sweeper is None or self._sweeper.dead:
                    self._sweeper = gevent.spawn(self._sweep)
            else:
                self._drop(channel)

    def _drop(self, channel: str) -> None:
        """Forget ``channel``, which has no listener: unsubscribe it."""
        del self._listeners[channel]
        self._idle.pop(channel, None)
        self._stamps.pop(channel, None)
        self._prereads.pop(channel, None)
        self._resync.discard(channel)
        self._unrouted.discard(channel)
        link = self._route.pop(channel, None)
        if link is not None:
            link.unwant(channel)
            link.wake()
        if link is None or channel not in link.subscribed:
            # Subscribed channels lose theirs when the link unsubscribes them.
            self._confirmed.discard(channel)
            self._waiting.pop(channel, None)

    def _sweep(self) -> None:
        """Unsubscribe the lingering channels whose time is up, until none lingers."""
        while self._idle:
            gevent.sleep(self.linger / 4)
            now = time.monotonic()
            for channel, deadline in list(self._idle.items()):
                if deadline > now:
                    break  # in deadline order: the rest are younger
                self._drop(channel)

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
            if channel in self._confirmed:
                continue
            event = self._waiting.setdefault(channel, Event())
            if not event.wait(max(0.0, deadline - time.monotonic())):
                self._resync.update(c for c in channels if c in self._listeners and not self.confirmed([c]))
                return False
        return True

    def stamp(self, channel: str) -> int | None:
        """A number that stays the same as long as no message on ``channel`` passed here; None while it is not subscribed.

        Every live message on the channel, and every loss or renewal of its
        subscription, gives it a number never used before. So a value read
        from Redis while the stamp stayed the same is still the channel's
        latest, as far as messages published on it can tell
        (:class:`~ws4redis_uwsgi.bus.batched_reader.BatchedReader` keeps the
        stored messages of handshakes by it).
        """
        return self._stamps.get(channel)

    def preread(self, channel: str) -> tuple[int, Any, float] | None:
        """``(stamp, value, monotonic time)`` of ``channel``'s stored message as read with its subscription, if still current.

        Current: no message passed on the channel since (its stamp is the
        same). Handed over once: the batched reader keeps it from then on,
        like a value it read itself, so the hub holds it only until the
        handshake that subscribed the channel reads it.
        """
        entry = self._prereads.pop(channel, None)
        if entry is None or entry[0] != self._stamps.get(channel):
            return None
        return entry

    def settle(self, channels: Iterable[str], timeout: float) -> bool:
        """Wait until the listeners of ``channels`` got every message Redis sent this worker for them before now.

        Why: a value read on another connection (a channel's stored message)
        may be newer than what this worker's subscription has handed out so
        far; once Redis answered a PING on each of their connections, every
        message it published before that read has been handed out (Redis
        answers a connection in order). False when an answer took longer than
        ``timeout``, or a connection is away (its listeners catch up then).
        """
        links = {self._route.get(channel) for channel in channels}
        events = [link.settle() for link in links if link is not None and link.connected]
        deadline = time.monotonic() + timeout
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in events) and len(events) == len(links)

    def confirmed(self, channels: Iterable[str]) -> bool:
        """Whether Redis confirmed the subscription of every one of ``channels`` on its current connection."""
        return all(channel in self._confirmed for channel in channels)

    @property
    def connected(self) -> bool:
        """Whether every shard this worker needs is subscribed (False while one is away)."""
        return not self._unrouted and all(link.connected for link in self._links.values() if link.wanted)

    def channel_count(self) -> int:
        """Channels with listeners (for metrics)."""
        return len(self._listeners) - len(self._idle)

    def connections(self) -> dict[str, bool]:
        """The pub/sub connection of each shard with listeners, and whether it is up (for tests and health)."""
        return {target: link.connected for target, link in self._links.items() if link.wanted}

    def redis_now_ms(self) -> int:
        """Redis's clock now, in ms, as measured at the last connection: what new message ids are near."""
        return int((time.time() + self.clock_offset) * 1000)

    def channel_state_size(self) -> int:
        """Entries of per-channel state the hub holds; at most a few per channel with listeners (for tests)."""
        links = sum(len(link.subscribed) + len(link._changed) + len(link.reading) for link in self._links.values())
        idle = len(self._idle)
        confirmations = len(self._confirmed) + len(self._waiting) + len(self._prereads)
        return len(self._listeners) + links + confirmations + len(self._resync) + len(self._unrouted) + idle

    def close(self) -> None:
        """Stop the subscription loops (their connections close with them); for a process that forgets its hub."""
        self._stamps.clear()  # nothing read from Redis is current any more
        self._prereads.clear()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None
        for link in self._links.values():
            link.close()
        if self._refresher is not None:
            self._refresher.kill(block=False)
            self._refresher = None

    # -- routing channels to shards -------------------------------------------------

    def _assign(self, channel: str) -> None:
        """Give ``channel`` to the link of the shard that owns it (or wait for the slot map)."""
        target = self._shards.target(channel)
        if target is None:
            self._unrouted.add(channel)
            self.refresh()
            return
        link = self._links.get(target)
        if link is None:
            link = self._links[target] = _Link(self, target, self._shards)
        self._route[channel] = link
        link.want(channel)
        link.wake()

    def refresh(self) -> None:
        """Learn again where channels live (a Cluster's slots moved, or a shard is gone), in the background."""
        if self._shards.sharded and (self._refresher is None or self._refresher.dead):
            self._refresher = gevent.spawn(self._refresh)

    def _refresh(self) -> None:
        while True:
            try:
                self._shards.refresh()
            except Exception as exc:
                logger.warning("Redis Cluster slots not readable (%s); trying again in %.2fs", exc, self._refresh_backoff)
                gevent.sleep(self._refresh_backoff * random.uniform(0.5, 1.0))
                self._refresh_backoff = min(self._refresh_backoff * 2, self.max_backoff)
                continue
            self._refresh_backoff = self.min_backoff
            self._reroute()
            return

    def _reroute(self) -> None:
        """Move every channel whose shard changed to the right link; its listeners catch up once it is subscribed there."""
        self._unrouted.clear()
        for channel in list(self._listeners):
            old = self._route.get(channel)
            target = self._shards.target(channel)
            if target is None:
                self._unrouted.add(channel)
                continue
            if old is not None and old.target == target:
                continue
            if old is not None:
                old.unwant(channel)
                old.wake()
            self._stamps.pop(channel, None)
            self._confirmed.discard(channel)
            self._resync.add(channel)
            self._assign(channel)
        if self._unrouted:
            self.refresh()

    # -- what links report -----------------------------------------------------------

    def _deliver(self, data: Any, channel: str, link: _Link | None = None) -> None:
        if channel in self._stamps:
            self._stamps[channel] = self._next_stamp()
        listeners = self._listeners.get(channel)
        if listeners:
            bus_message = self.accept(data, channel, link)
            if bus_message is None:
                return
            self.deliveries += len(listeners)
            deliver_all(tuple(listeners), bus_message)

    def _subscribed(self, link: _Link, channel: str) -> None:
        """``link`` got Redis's confirmation for ``channel``."""
        if self._route.get(channel) is not link or channel not in self._listeners:
            return
        self._confirmed.add(channel)
        event = self._waiting.pop(channel, None)
        if event is not None:
            event.set()
        self._stamps[channel] = self._next_stamp()
        if channel in self._resync:
            # Messages may have gone by while the subscription was down.
            self._resync.discard(channel)
            for listener in tuple(self._listeners[channel]):
                listener.resync()

    def _stored(self, link: _Link, channel: str, value: Any, stamp: int) -> None:
        """``link`` read ``channel``'s stored message with its subscription, and no message passed since (``stamp``)."""
        if self._route.get(channel) is link and channel in self._listeners and self._stamps.get(channel) == stamp:
            self._prereads[channel] = (stamp, value, time.monotonic())

    def _unsubscribed(self, channels: Iterable[str]) -> None:
        """A link unsubscribed ``channels``: those without listeners lose their confirmation."""
        for channel in channels:
            if channel not in self._listeners:
                self._confirmed.discard(channel)
                self._waiting.pop(channel, None)

    def _lost(self, link: _Link, channels: Iterable[str]) -> None:
        """``link`` lost the subscription of ``channels``: their listeners catch up once they are back."""
        for channel in channels:
            if self._route.get(channel) is link and channel in self._listeners:
                self._stamps.pop(channel, None)
                self._prereads.pop(channel, None)
                self._resync.add(channel)
                self._confirmed.discard(channel)

    def accept(self, data: bytes | str, channel: Any, link: _Link | None = None) -> envelope.BusMessage | None:
        """The message ``data`` (from ``channel``, live or stored) carries, or None when nobody may receive it.

        The one rule for messages this package did not publish: bytes that
        imitate its wrapping, and ids too far ahead of Redis's clock (trusted,
        such an id would make every later message look old to the clients
        that got it), are dropped with a log line.
        """
        try:
            message = envelope.decode(data, channel)
        except envelope.MalformedMessageError as exc:
            self.drop(channel, str(exc))
            return None
        return message if self.trusted(message, channel, link) else None

    def trusted(self, message: envelope.BusMessage, channel: Any, link: _Link | None = None) -> bool:
        """False, with a log line, for a message whose id is too far ahead of its Redis's clock.

        The clock is that of the shard the message's channel lives on
        (``link``'s, or the route's), as last measured; an id that looks too
        far ahead makes the link measure it again first (at most once per
        :data:`CLOCK_RECHECK_INTERVAL`), so a clock that drifted or stepped
        since the connection opened does not make genuine messages look forged.
        """
        order = message.order
        if order is None:
            return True
        if link is None:
            link = self._route.get(message.channel)  # type: ignore[arg-type]
        offset = link.clock_offset if link is not None else self.clock_offset
        if envelope.plausible_id(order, int((time.time() + offset) * 1000)):
            return True
        if link is not None and link.measure_again():
            if envelope.plausible_id(order, int((time.time() + link.clock_offset) * 1000)):
                return True
        self.drop(channel, f"id {message.id} far ahead of Redis's clock")
        return False

    def drop(self, channel: Any, reason: str) -> None:
        """Drop a message nobody may receive; log it, at most once per DROP_LOG_INTERVAL."""
        dropped = self._drops.due(time.monotonic())
        if dropped is not None:
            logger.warning(
                "dropped %d message(s) on the bus that this package did not publish; the last on %s: %s",
                dropped,
                loggable(channel),
                reason,
            )


class _Link:
    """One pub/sub connection, to one shard, and the loop that serves it."""

    def __init__(self, hub: SubscriptionHub, target: str, shards: Shards) -> None:
        self.hub = hub
        self.target = target
        self._shards = shards
        #: Channels this shard should be subscribed to (with listeners, routed here).
        #: Changed only through want() and unwant().
        self.wanted: set[str] = set()
        self.subscribed: set[str] = set()  # SUBSCRIBE sent on the current connection
        #: Channels whose wanted and subscribed states may differ: what _sync looks at. Comparing
        #: the two whole sets instead cost every handshake time in proportion to the channels held.
        self._changed: set[str] = set()
        #: Channels whose stored message was asked for with their SUBSCRIBE: the hub's stamp at their
        #: confirmation (None before it). A message after it makes the value read stale.
        self.reading: dict[str, int | None] = {}
        self.connected = False
        #: Who parses the current connection's replies (``hiredis`` or ``redis-py``, see bus/subscription.py).
        self.reader: str | None = None
        self._waiter = FdWaiter()
        self._greenlet: gevent.Greenlet | None = None
        self._backoff = hub.min_backoff
        self._sharded = shards.sharded
        #: This shard's clock minus this process's (seconds), measured whenever the link connects.
        self.clock_offset = hub.clock_offset
        self._measured_at = -math.inf  # time.monotonic() of the last measure
        #: Handshakes waiting for the next PING's answer (see :meth:`settle`), and the PINGs sent, in order:
        #: each entry the events its answer sets (None: the keep-alive's own).
        self._barriers: list[Event] = []
        self._pings: deque[list[Event] | None] = deque()
        #: time.monotonic() when _sync last sent commands, and whether the loop holds what changed since.
        self._sent_at = -math.inf
        self._holding = False

    def settle(self) -> Event:
        """An event set once Redis answered a PING sent from now on: every push sent before it has been handed out."""
        event = Event()
        self._barriers.append(event)
        self.wake()
        return event

    def _ping(self, subscription: Subscription, events: list[Event] | None) -> None:
        subscription.ping()
        self._pings.append(events)

    def _release(self) -> None:
        """Let every handshake waiting for a PING's answer go (the connection is gone: none will come)."""
        for events in [self._barriers, *self._pings]:
            for event in events or ():
                event.set()
        self._barriers = []
        self._pings.clear()

    def want(self, channel: str) -> None:
        self.wanted.add(channel)
        self._changed.add(channel)

    def unwant(self, channel: str) -> None:
        self.wanted.discard(channel)
        if channel in self.subscribed:
            self._changed.add(channel)
        else:  # never subscribed here (Redis away, or left before a sync): nothing to undo
            self._changed.discard(channel)

    def wake(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        elif self._holding:
            return  # the loop looks at everything once the hold ends, in at most SUBSCRIBE_INTERVAL
        self._waiter.wake()

    def _hold(self) -> float:
        """Seconds the loop holds the subscriptions that changed, to send them with those still to come (0: send now)."""
        if not self._changed:
            return 0.0
        return max(0.0, self._sent_at + SUBSCRIBE_INTERVAL - time.monotonic())

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self._waiter.unwatch()

    def _run(self) -> None:
        hub = self.hub
        while True:
            subscription = None
            try:
                if not self.wanted:
                    self._waiter.wait(None)
                    continue
                client = self._shards.client(self.target)
                self._measure_clock(client)
                # On the connection TIME just used.
                subscription = open_subscription(client, self._sharded, read_stored=hub.read_stored)
                self._serve(subscription)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                hub.disconnects += 1
                logger.warning("Redis subscription lost (%s); reconnecting in %.2fs", exc, self._backoff)
                hub.refresh()  # a Cluster shard may be gone: its channels move to the new master
            except redis.ResponseError as exc:  # MOVED: a slot is elsewhere now
                hub.disconnects += 1
                logger.warning("Redis subscription refused (%s); reconnecting in %.2fs", exc, self._backoff)
                hub.refresh()
            except Exception:
                hub.disconnects += 1
                logger.exception("Redis subscription failed; reconnecting in %.2fs", self._backoff)
            finally:
                self._on_disconnect(subscription)
            gevent.sleep(self._backoff * random.uniform(0.5, 1.0))
            self._backoff = min(self._backoff * 2, hub.max_backoff)

    def _measure_clock(self, client: redis.Redis) -> None:
        """This shard's clock against this process's: its message ids follow it, and new websockets start from it.

        Measured on every connection, so a new master (after a failover, or a
        Redis restarted elsewhere) is measured before its messages are read.
        The quickest of a few round trips counts: the first one also opens
        the connection, and any one may wait for other greenlets; either
        would put the estimate ahead of Redis's clock by half the wait.
        """
        self._measured_at = time.monotonic()
        best: tuple[float, float] | None = None
        for _ in range(CLOCK_SAMPLES):
            before = time.time()
            seconds, microseconds = client.time()
            after = time.time()
            if best is None or after - before < best[0]:
                best = (after - before, seconds + microseconds / 1e6 - (before + after) / 2)
        assert best is not None
        self.clock_offset = self.hub.clock_offset = best[1]

    def measure_again(self) -> bool:
        """Measure this shard's clock again, unless it was measured less than :data:`CLOCK_RECHECK_INTERVAL` ago.

        :returns: True when it was measured now.
        """
        if time.monotonic() - self._measured_at < CLOCK_RECHECK_INTERVAL:
            return False
        client = self._shards.client(self.target)  # a connection of its own, closed again at once
        try:
            self._measure_clock(client)
        except Exception as exc:  # whatever it is, the message is judged on the last measure
            logger.info("Redis's clock not measured again (%s)", exc)
            return False
        finally:
            client.connection_pool.disconnect()
        return True

    def _on_disconnect(self, subscription: Subscription | None) -> None:
        self.connected = False
        self._release()
        self._waiter.unwatch()
        self.hub._lost(self, self.wanted | self.subscribed)
        self.subscribed.clear()
        self.reading.clear()
        self._changed = set(self.wanted)  # the next connection subscribes them all
        if subscription is not None:
            try:
                subscription.close()
            except Exception:  # the connection is gone already
                pass

    def _serve(self, subscription: Subscription) -> None:
        self._sync(subscription)  # the first SUBSCRIBE (redis-py's PubSub opens its connection with it)
        self._waiter.watch(subscription.fileno())
        self.connected = True
        self.reader = subscription.reader
        logger.info("Redis subscription connected to %s (pid %d, replies read by %s)", self.target, os.getpid(), self.reader)
        ping_interval = self.hub.ping_interval
        # On a Sentinel's master, look at least once a second whether the sentinels name another one:
        # after a SENTINEL FAILOVER (or a partition) the old master stays up, and a master, for seconds.
        following = subscription.on_sentinel
        wait = min(ping_interval, MASTER_CHECK_INTERVAL) if following else ping_interval
        next_check = time.monotonic() + MASTER_CHECK_INTERVAL if following else math.inf
        quiet = 0.0  # seconds waited in vain since the connection was last heard of (or pinged)
        ping_pending = False
        while True:
            if self._drain(subscription):
                ping_pending = False
            hold = self._hold()
            if not hold:
                # A channel subscribed from now on has a handshake about to read its stored message.
                self._sync(subscription, read_stored=True)
            if self._barriers:
                events, self._barriers = self._barriers, []
                self._ping(subscription, events)
            if following and time.monotonic() >= next_check:
                next_check = time.monotonic() + MASTER_CHECK_INTERVAL
                master = subscription.master_elsewhere()
                if master is not None:
                    raise redis.ConnectionError(f"the sentinels name another master, {master[0]}:{master[1]}")
            timeout = min(wait, hold) if hold else wait
            self._holding = bool(hold)  # meanwhile a handshake's wake() costs nothing: the hold ends by itself
            try:
                woken = self._waiter.wait(timeout)
            finally:
                self._holding = False
            if woken:
                quiet = 0.0
                continue
            quiet += timeout
            if quiet < ping_interval:
                continue
            # Idle for a whole interval: make sure the connection is still alive.
            quiet = 0.0
            if ping_pending:
                raise redis.ConnectionError("no answer to PING")
            if self.subscribed:
                self._ping(subscription, None)
                ping_pending = True

    def _sync(self, subscription: Subscription, read_stored: bool = False) -> None:
        """Bring the Redis subscription in line with the channels that have listeners here.

        With ``read_stored``, new channels' stored messages are read with their subscription where the connection can.
        """
        if not self._changed:
            return
        changed, self._changed = self._changed, set()
        new = {c for c in changed if c in self.wanted and c not in self.subscribed}
        gone = {c for c in changed if c in self.subscribed and c not in self.wanted}
        if new or gone:
            self._sent_at = time.monotonic()
        if new:
            self.subscribed |= new
            reading = read_stored and subscription.reads_stored
            subscription.subscribe(sorted(new), read_stored=reading)
            if reading:
                self.reading.update(dict.fromkeys(new))
        if gone:
            self.subscribed -= gone
            self.hub._unsubscribed(gone)
            subscription.unsubscribe(sorted(gone))

    def _drain(self, subscription: Subscription) -> int:
        """Handle every reply the connection holds now; the count handled."""
        count = 0
        hub = self.hub
        yielded_at = hub.deliveries
        for reply in subscription.replies():
            count += 1
            self._handle(reply)
            if count % DRAIN_BATCH == 0 or hub.deliveries - yielded_at >= DRAIN_DELIVERIES:
                # Let the websockets send what they got before handing out more,
                # or a burst would fill every inbox while nobody writes.
                gevent.sleep(0)
                yielded_at = hub.deliveries
        return count

    def _handle(self, reply: Reply) -> None:
        kind, channel = reply.kind, reply.channel
        if kind.lower() == "pong":
            events = self._pings.popleft() if self._pings else None
            for event in events or ():
                event.set()
            return
        if channel is None:
            return  # a PONG before any subscription
        if kind in ("message", "smessage"):
            self.hub._deliver(reply.data, channel, self)
        elif kind in ("subscribe", "ssubscribe"):
            self._backoff = self.hub.min_backoff  # Redis took a subscription: the next loss starts over
            if channel in self.subscribed:
                self.hub._subscribed(self, channel)
                if channel in self.reading:
                    self.reading[channel] = self.hub.stamp(channel)
        elif kind == "stored":
            stamp = self.reading.pop(channel, None)
            if stamp is not None:
                self.hub._stored(self, channel, reply.data, stamp)
        elif kind == "sunsubscribe" and channel in self.wanted and channel in self.subscribed:
            # Not asked for: the slot moved to another shard. Its listeners catch
            # up once it is subscribed where it lives now.
            logger.info("Redis Cluster moved %s away from %s; following it", loggable(channel), self.target)
            self.subscribed.discard(channel)
            self._changed.add(channel)
            self.hub._lost(self, [channel])
            self.hub.refresh()
