"""Presence in Redis: the scripts, the worker's board and its greenlet, and the readers.

Names and the event format are in :mod:`ws4redis_uwsgi.core.presence`. Every
script touches the keys of one facility only, which share one hash tag on a
Cluster, so each runs in one slot; events are PUBLISHed (SPUBLISHed on a
Cluster) by the script that counts a user's first connection or last one.

Costs, with U users present on a facility and W workers serving it:

* a connection that opens or closes: O(1) in U and W. The websocket only
  changes this worker's counts in memory and wakes the board's greenlet,
  which sends the net changes since its last turn (a reload that closes and
  opens a tab nets to nothing) in one script call per facility;
* :func:`read_count`: O(log W) (a look for dead workers), then O(1);
* :func:`read_users`: O(U), read with HSCAN so that Redis never blocks for it;
* a refresh (every TTL/5 per worker and facility): O(log W);
* a dead worker, reaped once: O(the users it served).

A worker whose entry is gone (it stalled past its expiry and was reaped, or
Redis lost its data) learns it at its next change or refresh and writes its
whole state again (:data:`SYNC`); so does a worker whose script failed.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import gevent
import redis
from gevent.event import Event

from ..core import envelope
from ..core.presence import LocalPresence, PresenceKeys, expiry_ms, heartbeat_interval, parse_event

logger = logging.getLogger("ws4redis_uwsgi.presence")

#: Dead workers one script call reaps at most.
REAP_LIMIT = 100
#: Seconds a websocket that asked for events waits for the events channel before it counts itself in.
EVENTS_SUBSCRIBE_TIMEOUT = 3.0
#: Seconds before a failed write to Redis is tried again.
RETRY_DELAY = 1.0

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function tell(channel, sharded, kind, user)
  local frame = '!' .. kind .. '\\n' .. user
  if sharded == '1' then redis.call('SPUBLISH', channel, frame) else redis.call('PUBLISH', channel, frame) end
end
-- Add d to a user's connections everywhere: a join or a leave when that crosses zero.
local function bump(users, channel, sharded, user, d)
  local n = redis.call('HINCRBY', users, user, d)
  if n <= 0 then
    redis.call('HDEL', users, user)
    if n - d > 0 then tell(channel, sharded, 'leave', user) end
  elseif n - d <= 0 then
    tell(channel, sharded, 'join', user)
  end
end
local function add_total(total, d)
  if d ~= 0 then
    if redis.call('INCRBY', total, d) <= 0 then redis.call('DEL', total) end
  end
end
-- A worker leaves a facility: its entry, its total and its own counts go.
local function forget(workers, wtotals, mine, worker)
  redis.call('DEL', mine)
  redis.call('HDEL', wtotals, worker)
  redis.call('ZREM', workers, worker)
end
-- Take back what workers that did not refresh in time counted.
local function reap(base, users, total, workers, wtotals, channel, sharded, now)
  local dead = redis.call('ZRANGEBYSCORE', workers, '-inf', now, 'LIMIT', 0, REAP_LIMIT)
  for _, worker in ipairs(dead) do
    local mine = base .. ':w:' .. worker
    local counts = redis.call('HGETALL', mine)
    for i = 1, #counts, 2 do bump(users, channel, sharded, counts[i], -tonumber(counts[i + 1])) end
    add_total(total, -tonumber(redis.call('HGET', wtotals, worker) or 0))
    forget(workers, wtotals, mine, worker)
  end
  return #dead
end
""".replace("REAP_LIMIT", str(REAP_LIMIT))

#: KEYS users, total, workers, wtotals, mine; ARGV channel, sharded, worker, total delta, then user, delta pairs.
#: 0 when the worker has no entry (it must SYNC), else 1.
CHANGE = (
    _COMMON
    + """
local worker = ARGV[3]
if not redis.call('ZSCORE', KEYS[3], worker) then return 0 end
local td = tonumber(ARGV[4])
add_total(KEYS[2], td)
local mine_total = tonumber(redis.call('HINCRBY', KEYS[4], worker, td))
for i = 5, #ARGV, 2 do
  local d = tonumber(ARGV[i + 1])
  if redis.call('HINCRBY', KEYS[5], ARGV[i], d) <= 0 then redis.call('HDEL', KEYS[5], ARGV[i]) end
  bump(KEYS[1], ARGV[1], ARGV[2], ARGV[i], d)
end
if mine_total <= 0 then
  -- This worker's last connection here closed: it leaves the facility (a later one SYNCs).
  forget(KEYS[3], KEYS[4], KEYS[5], worker)
end
return 1
"""
)

#: KEYS users, total, workers, wtotals, mine; ARGV channel, sharded, worker, expiry ms, total, then user, count pairs.
#: Makes Redis hold exactly this worker's state (the differences are applied, with their events).
SYNC = (
    _COMMON
    + """
local worker = ARGV[3]
local old_total = 0
local diff = {}
if redis.call('ZSCORE', KEYS[3], worker) then
  old_total = tonumber(redis.call('HGET', KEYS[4], worker) or 0)
  local old = redis.call('HGETALL', KEYS[5])
  for i = 1, #old, 2 do diff[old[i]] = -tonumber(old[i + 1]) end
end
redis.call('DEL', KEYS[5])
for i = 6, #ARGV, 2 do
  diff[ARGV[i]] = (diff[ARGV[i]] or 0) + tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
end
for user, d in pairs(diff) do
  if d ~= 0 then bump(KEYS[1], ARGV[1], ARGV[2], user, d) end
end
local new_total = tonumber(ARGV[5])
add_total(KEYS[2], new_total - old_total)
if new_total > 0 then
  redis.call('HSET', KEYS[4], worker, new_total)
  redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[4]), worker)
else
  forget(KEYS[3], KEYS[4], KEYS[5], worker)
end
return 1
"""
)

#: KEYS users, total, workers, wtotals; ARGV base, channel, sharded, worker, expiry ms.
#: Reaps dead workers, then moves this worker's expiry on: 0 when it has no entry (it must SYNC).
REFRESH = (
    _COMMON
    + """
local now = now_ms()
reap(ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], now)
if not redis.call('ZSCORE', KEYS[3], ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
return 1
"""
)

#: KEYS users, total, workers, wtotals; ARGV base, channel, sharded.
#: Reaps dead workers; returns the total, and whether more dead workers may wait.
READ = (
    _COMMON
    + """
local reaped = reap(ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], now_ms())
return {tonumber(redis.call('GET', KEYS[2]) or 0), reaped >= REAP_LIMIT and 1 or 0}
""".replace("REAP_LIMIT", str(REAP_LIMIT))
)


class Scripts:
    """The scripts, registered with one client on first use (EVALSHA; EVAL once when Redis does not know one).

    Registering reads the client's encoder, which makes a Cluster client
    connect: it happens on first use, where Redis errors are expected.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._registered: dict[str, Any] = {}

    def run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self._registered.get(source)
        if script is None:
            script = self._registered[source] = self.client.register_script(source)
        return script(keys=keys, args=args)


def _common_keys(keys: PresenceKeys) -> list[str]:
    return [keys.users, keys.total, keys.workers, keys.worker_totals]


def _flag(sharded: bool) -> str:
    return "1" if sharded else "0"


def read_count(scripts: Scripts, keys: PresenceKeys, *, sharded: bool) -> int:
    """Every open connection on the facility, once dead workers' are taken back (all of them, however many died)."""
    while True:
        total, more = scripts.run(READ, _common_keys(keys), [keys.base, keys.channel, _flag(sharded)])
        if not more:
            return max(0, int(total))


def read_users(client: Any, scripts: Scripts, keys: PresenceKeys, *, sharded: bool) -> dict[str, int]:
    """``{username: open connections}`` on the facility, once dead workers' are taken back (HSCAN, O(users))."""
    read_count(scripts, keys, sharded=sharded)
    users: dict[str, int] = {}
    for name, value in client.hscan_iter(keys.users, count=1000):
        count = int(value)
        if count > 0:
            users[name.decode("utf-8", "replace") if isinstance(name, bytes) else name] = count
    return users


class EventFeed:
    """The hub's listener on one facility's events channel: each event, made a notice once, to every websocket that asked."""

    def __init__(self) -> None:
        self.subscribers: set[Any] = set()

    def deliver(self, message: envelope.BusMessage) -> None:
        if message.binary or parse_event(message.payload) is None:
            return  # not from the presence scripts
        notice = envelope.BusMessage(message.payload, notice=True)
        for subscriber in tuple(self.subscribers):
            subscriber.deliver(notice)

    def resync(self) -> None:
        """Events lost while Redis was away are not replayed: ``online_users()`` says who is there."""


class Membership:
    """One websocket's presence on its facility: counted from :meth:`join` to :meth:`leave`, and its events."""

    __slots__ = ("board", "events", "facility", "joined", "subscriber", "username")

    def __init__(self, board: PresenceBoard, facility: str, username: str | None, subscriber: Any, events: bool) -> None:
        self.board = board
        self.facility = facility
        self.username = username
        self.subscriber = subscriber
        self.events = events
        self.joined = False
        if events:
            board.listen(facility, subscriber)

    def join(self) -> None:
        """Count the websocket in (its events channel confirmed first, so that it sees its own join)."""
        if self.joined:
            return
        if self.events:
            self.board.wait_listening(self.facility, EVENTS_SUBSCRIBE_TIMEOUT)
        self.joined = True
        self.board.add(self.facility, self.username)

    def leave(self) -> None:
        """Count the websocket out, and stop its events; safe from any greenlet or callback, and more than once."""
        if self.events:
            self.events = False
            self.board.unlisten(self.facility, self.subscriber)
        if self.joined:
            self.joined = False
            self.board.remove(self.facility, self.username)


class PresenceBoard:
    """One worker's presence on every facility: its counts in memory, and the greenlet that tells Redis.

    The greenlet sends what changed as soon as it is woken, refreshes the
    worker's entries every TTL/5 (reaping dead workers on the way), writes a
    facility's whole state again when Redis lost it or a write failed, and
    retries after :data:`RETRY_DELAY` while Redis is away.
    """

    def __init__(self, client: Any, hub: Any, *, prefix: str | None, sharded: bool, ttl: float) -> None:
        self.client = client
        self.hub = hub
        self.prefix = prefix
        self.sharded = sharded
        self.ttl = ttl
        #: This worker's name in Redis: unique among all workers, never reused.
        self.worker = uuid.uuid4().hex
        self._scripts = Scripts(client)
        self._local: dict[str, LocalPresence] = {}
        self._dirty: set[str] = set()  # facilities whose whole state must be written again
        self._feeds: dict[str, EventFeed] = {}
        self._keys: dict[str, PresenceKeys] = {}
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None

    def connections(self) -> int:
        """This worker's open connections to facilities with presence (metrics)."""
        return sum(local.total for local in self._local.values())

    def keys(self, facility: str) -> PresenceKeys:
        keys = self._keys.get(facility)
        if keys is None:
            keys = self._keys[facility] = PresenceKeys.of(self.prefix, facility, sharded=self.sharded)
        return keys

    # -- what websockets call ------------------------------------------------------------

    def add(self, facility: str, username: str | None) -> None:
        local = self._local.get(facility)
        if local is None:
            local = self._local[facility] = LocalPresence()
        local.add(username)
        self._poke()

    def remove(self, facility: str, username: str | None) -> None:
        local = self._local.get(facility)
        if local is not None:
            local.remove(username)
            self._poke()

    def listen(self, facility: str, subscriber: Any) -> None:
        feed = self._feeds.get(facility)
        if feed is None:
            feed = self._feeds[facility] = EventFeed()
            self.hub.add(feed, [self.keys(facility).channel])
        feed.subscribers.add(subscriber)

    def unlisten(self, facility: str, subscriber: Any) -> None:
        feed = self._feeds.get(facility)
        if feed is None:
            return
        feed.subscribers.discard(subscriber)
        if not feed.subscribers:
            del self._feeds[facility]
            self.hub.remove(feed, [self.keys(facility).channel])

    def wait_listening(self, facility: str, timeout: float) -> bool:
        return bool(self.hub.wait_subscribed([self.keys(facility).channel], timeout))

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    # -- the greenlet --------------------------------------------------------------------

    def _poke(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        self._wake.set()

    def _run(self) -> None:
        interval = heartbeat_interval(self.ttl)
        next_refresh = 0.0
        while self._local:
            self._wake.clear()
            try:
                failed = self._flush()
                now = time.monotonic()
                if now >= next_refresh and not failed:
                    failed = self._refresh_all()
                    next_refresh = now + interval
                self._forget_idle()
            except Exception:  # a bug must not end presence for good; GreenletExit passes
                logger.exception("presence greenlet failed; trying again")
                failed = True
            if not self._local:
                break
            self._wake.wait(min(RETRY_DELAY, interval) if failed else max(0.0, next_refresh - time.monotonic()))

    def _flush(self) -> bool:
        """Send every facility's changes (or whole state, when dirty); True when one failed."""
        failed = False
        for facility, local in list(self._local.items()):
            try:
                if facility in self._dirty:
                    self._sync(facility, local)
                elif local.changed:
                    total, users = local.take_changes()
                    self._dirty.add(facility)  # until Redis took them: a lost reply leaves their fate unknown
                    if self._change(facility, total, users):
                        self._dirty.discard(facility)
                    else:
                        self._sync(facility, local)  # no entry: this worker was reaped, or Redis lost it
            except redis.RedisError as exc:
                failed = True
                logger.warning("presence on %r not written to Redis (%s); trying again", facility, exc)
        return failed

    def _refresh_all(self) -> bool:
        failed = False
        for facility, local in list(self._local.items()):
            if facility in self._dirty or not local.total:
                continue
            keys = self.keys(facility)
            try:
                alive = self._scripts.run(
                    REFRESH,
                    _common_keys(keys),
                    [keys.base, keys.channel, _flag(self.sharded), self.worker, expiry_ms(self.ttl)],
                )
                if not alive:
                    logger.warning("presence of this worker on %r was lost in Redis; writing it again", facility)
                    self._dirty.add(facility)
                    self._sync(facility, local)
            except redis.RedisError as exc:
                failed = True
                logger.warning("presence on %r not refreshed in Redis (%s); trying again", facility, exc)
        return failed

    def _forget_idle(self) -> None:
        """Drop facilities without connections once Redis knows (nothing grows with facilities left)."""
        for facility in [f for f, local in self._local.items() if not local.total and not local.changed]:
            if facility not in self._dirty:
                del self._local[facility]
                if facility not in self._feeds:
                    self._keys.pop(facility, None)

    def _change(self, facility: str, total: int, users: dict[str, int]) -> bool:
        keys = self.keys(facility)
        args: list[Any] = [keys.channel, _flag(self.sharded), self.worker, total]
        for username, delta in users.items():
            args += (username, delta)
        return bool(self._scripts.run(CHANGE, [*_common_keys(keys), keys.worker(self.worker)], args))

    def _sync(self, facility: str, local: LocalPresence) -> None:
        keys = self.keys(facility)
        total, users = local.take_state()
        args: list[Any] = [keys.channel, _flag(self.sharded), self.worker, expiry_ms(self.ttl), total]
        for username, count in users.items():
            args += (username, count)
        self._scripts.run(SYNC, [*_common_keys(keys), keys.worker(self.worker)], args)
        self._dirty.discard(facility)
