"""Per-channel history in Redis Streams, so a client that reconnects misses nothing.

Every publish runs one Lua script per shard (one call for all channels with
a standalone Redis or Sentinel; with a Cluster one per channel, pipelined per
shard, since a script never spans slots). For each of its channels the
script appends the wrapped message to the channel's stream (trimmed by
length and age) under a new id, publishes it (``SPUBLISH`` on a Cluster)
and, when asked, persists it: atomic per channel, one round trip per shard.

Ids are per channel: after Redis's clock (milliseconds, then the
microseconds within them, so ids of one Redis grow across channels too) and
after the newest entry of the channel's stream. No key is written by every
publish. A client that reconnects gives its position in each channel (see
:mod:`ws4redis_uwsgi.core.positions`) and gets, for all its channels, what
came after, merged in id order; if a stream was trimmed past a position, it
is told that the gap cannot be recovered. Settings:
``WS4REDIS_HISTORY_LENGTH`` (entries per channel) and
``WS4REDIS_HISTORY_SECONDS`` (age); both 0 turns history off.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import settings
from ..core import envelope
from ..core.channels import prefix_string
from ..core.positions import Order
from . import scripts
from .connection import is_cluster, pipelined

logger = logging.getLogger("ws4redis_uwsgi")

# KEYS: n channels, their n streams, and n keys remembering the newest id
# trimmed from each stream (how a reconnecting client learns that it missed
# more than the history holds). All in one slot on a Cluster. Then, except on a
# Cluster, the id counter of earlier versions (see LEGACY_COUNTER_TTL_MS).
# ARGV: head, tail (the wrapped message around its id), expire, maxlen, max age in ms,
# how far (ms) a stream's newest id may be ahead of the clock and still be trusted,
# the command that publishes (PUBLISH, or SPUBLISH on a Cluster), LEGACY_COUNTER_TTL_MS.
# Returns {id, receivers, repaired}: repaired is 1 when a stream held an id this
# script never wrote (one far in the future, or beyond its newest entry) and was
# started again.
PUBLISH_SCRIPT = """
local n = math.floor(#KEYS / 3)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seq = tonumber(now[2]) % 1000 + 1  -- never 0: a position with sequence 0 is a client's arrival, not an id
local ahead = tonumber(ARGV[6])
local repaired = 0
local function after(last)
  -- Go past an id this script or an earlier version wrote; ignore one far ahead of the clock.
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  if not last_ms or #last_ms > 15 or #last_seq > 15 then return end
  last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
  if last_ms <= ms + ahead and (last_ms > ms or (last_ms == ms and last_seq >= seq)) then
    if last_seq >= 999999999999999 then
      ms, seq = last_ms + 1, 1
    else
      ms, seq = last_ms, last_seq + 1
    end
  end
end
local existed = {}
for i = 1, n do
  local newest = redis.call('XREVRANGE', KEYS[n + i], '+', '-', 'COUNT', 1)
  existed[i] = #newest > 0
  if existed[i] then after(newest[1][1]) end
end
local legacy = nil
if #KEYS > 3 * n then
  -- The id counter of earlier versions, while their publishers still run (they write it):
  -- go past it and move it on, or their next id would come before this one.
  legacy = KEYS[#KEYS]
  local last = redis.call('GET', legacy)
  if last then after(last) else legacy = nil end
end
local id = string.format('%d-%d', ms, seq)
if legacy then
  redis.call('SET', legacy, id, 'KEEPTTL')
  if redis.call('PTTL', legacy) == -1 then
    -- Set by an earlier version: it lives on while they publish, and expires after they stopped.
    redis.call('PEXPIRE', legacy, ARGV[8])
  end
end
local message = ARGV[1] .. id .. ARGV[2]
local expire, maxlen, age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local receivers = 0
for i = 1, n do
  local channel, stream, trimmed = KEYS[i], KEYS[n + i], KEYS[2 * n + i]
  local newest_gone = nil
  local added = redis.pcall('XADD', stream, id, 'm', message)
  if type(added) == 'table' and added.err then
    -- The stream already holds this id or a later one, which this script never
    -- wrote: its history cannot be trusted. Start it again; clients resuming
    -- from before this message learn of the gap.
    redis.call('DEL', stream)
    redis.call('XADD', stream, id, 'm', message)
    newest_gone = id
    repaired = 1
  end
  if age > 0 then
    -- Only when the oldest entry is too old: searching backwards from the cutoff
    -- walks the whole stream (tens of microseconds for a thousand entries).
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #oldest > 0 and tonumber(string.match(oldest[1][1], '^(%d+)')) < ms - age then
      local cutoff = string.format('%d-0', ms - age)
      local older = redis.call('XREVRANGE', stream, '(' .. cutoff, '-', 'COUNT', 1)
      newest_gone = older[1][1]
      redis.call('XTRIM', stream, 'MINID', cutoff)
    end
  end
  if maxlen > 0 then
    local excess = redis.call('XLEN', stream) - maxlen
    if excess > 0 then
      local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
      newest_gone = oldest[#oldest][1]
      redis.call('XTRIM', stream, 'MAXLEN', maxlen)
    end
  end
  if newest_gone then
    redis.call('SET', trimmed, newest_gone)
  elseif not existed[i] then
    -- A new stream: whatever this channel held before (on a master that failed over to a
    -- replica that never had it, say) is gone. 'c' and the first id: a client whose
    -- position is an older id learns of the gap (one SET per stream, not per publish).
    redis.call('SET', trimmed, 'c' .. id)
  end
  if age > 0 then
    redis.call('PEXPIRE', stream, age)
    redis.call('PEXPIRE', trimmed, age)
  end
  receivers = receivers + redis.call(ARGV[7], channel, message)
  if expire > 0 then
    redis.call('SET', channel, message, 'EX', expire)
  end
end
return {id, receivers, repaired}
"""


#: Earlier versions kept one id counter per Redis (``{p}ws4redis:last-id``), written by
#: every publish. While their publishers still run (a rolling upgrade), this version's
#: ids must follow that counter and move it on, or the next id of an earlier version
#: would come before one of this version on the same channel (its stream would then
#: refuse it, and clients would take it for a repeat). The script does so only while
#: the counter exists, and lets it expire this long after an earlier version last wrote it.
LEGACY_COUNTER_TTL_MS = 10 * 60 * 1000


def legacy_counter_key() -> str:
    return f"{prefix_string(settings.get('WS4REDIS_PREFIX'))}ws4redis:last-id"


def enabled() -> bool:
    return bool(settings.get("WS4REDIS_HISTORY_LENGTH") or settings.get("WS4REDIS_HISTORY_SECONDS"))


def stream_key(channel: str) -> str:
    """The stream holding ``channel``'s history: the prefix first, like every key (and the channel's hash tag)."""
    prefix = prefix_string(settings.get("WS4REDIS_PREFIX"))
    return f"{prefix}history:{channel[len(prefix) :]}"


def trimmed_key(channel: str) -> str:
    """The key holding the newest id trimmed from ``channel``'s history."""
    prefix = prefix_string(settings.get("WS4REDIS_PREFIX"))
    return f"{prefix}history-trimmed:{channel[len(prefix) :]}"


#: The publish script with history on (:func:`script_calls`).
PUBLISH = scripts.Script(PUBLISH_SCRIPT)


def script_calls(client: Any, channels: Sequence[str], head: bytes, tail: bytes, expire: int) -> scripts.ScriptCalls:
    """The script calls that publish one wrapped message to ``channels`` (settings read here, no I/O)."""
    cluster = is_cluster(client)
    args: list[bytes | int | str] = [
        head,
        tail,
        int(expire or 0),
        int(settings.get("WS4REDIS_HISTORY_LENGTH") or 0),
        int(settings.get("WS4REDIS_HISTORY_SECONDS") or 0) * 1000,
        envelope.MAX_ID_AHEAD_MS,
        "SPUBLISH" if cluster else "PUBLISH",
        LEGACY_COUNTER_TTL_MS,
    ]
    groups = scripts.shard_groups(client, channels)
    keys = [[*group, *map(stream_key, group), *map(trimmed_key, group)] for group in groups]
    if not cluster:  # no earlier version ran on a Cluster
        keys[0].append(legacy_counter_key())
    return scripts.calls(PUBLISH, channels, keys, args)


def publish_result(calls: scripts.ScriptCalls, replies: Sequence[Any]) -> tuple[str, int]:
    """(the id of the first copy, receivers) from the script's replies, one per call (pure, but for a log line)."""
    first_id = replies[0][0]
    if any(reply[2] for reply in replies):
        logger.warning(
            "a history stream of %s held an id this package never wrote; started again (resuming clients get !gap)",
            ", ".join(calls.channels),
        )
    return first_id.decode() if isinstance(first_id, bytes) else str(first_id), sum(int(reply[1]) for reply in replies)


def is_gap(
    since: Order,
    newest_trimmed: Order | None,
    oldest: Order | None,
    now_ms: int,
    max_age_ms: int,
    created: Order | None = None,
) -> bool:
    """True when messages after ``since`` may be gone from a channel's history (pure).

    ``newest_trimmed`` is the newest id the publish script trimmed (by length
    or age) and ``oldest`` the stream's oldest entry (None: no stream). A
    whole stream also expires after ``max_age_ms`` without a publish, and
    nothing remembers what it held: a position older than that horizon is a
    gap unless the stream still reaches back to it.

    ``created`` is the first id of a stream made anew: a position that is an
    older id was handed out from a stream that is gone (a failover to a
    replica that never had it). A position with sequence 0 is not an id (the
    script never assigns one) but the moment a client arrived on a channel
    where it got nothing: the channel's first message is no gap for it.
    """
    if newest_trimmed is not None and newest_trimmed > since:
        return True
    if created is not None and since[1] != 0 and since < created:
        return True
    if max_age_ms > 0 and since[0] < now_ms - max_age_ms:
        return oldest is None or oldest > since
    return False


#: Entries a backlog page holds at most, over all of a client's channels.
PAGE_ENTRIES = 64
#: Bytes a backlog page aims at: with large messages a page holds fewer entries.
PAGE_BYTES = 256 * 1024
#: Entries per channel of the first page, before the size of the entries is known.
FIRST_PAGE_ENTRIES = 8


@dataclass
class Page:
    """Messages of a backlog in id order, and the payload bytes they hold."""

    messages: list[envelope.BusMessage]
    nbytes: int


@dataclass
class _Cursor:
    """Where the reading of one channel's stream is: what was read and not yet handed out."""

    channel: str
    since: Order  # the client's position: the backlog is what came after
    after: str  # the next XRANGE starts after this id
    buffered: deque[tuple[Order, envelope.BusMessage]] = field(default_factory=deque)
    exhausted: bool = False


class BacklogReader:
    """What was published on a client's channels after its positions, read a page at a time, in id order.

    The whole backlog of a resuming client can be large (a thousand entries
    of tens of KiB per channel): reading it at once would hold all of it in
    the worker while a slow client takes it. Each channel's stream is read
    with XRANGE ... COUNT after that channel's position, merged in id order,
    and handed out a page at a time: the reader holds at most what the next
    page needs. The first page also tells whether the history still reaches
    back to every position (:attr:`gap`). Entries that are not messages of
    this package are skipped.
    """

    def __init__(
        self,
        client: Any,
        positions: Mapping[str, Order],
        run: Callable[[list[tuple[Any, ...]]], list[Any]] | None = None,
        brought: frozenset[str] = frozenset(),
    ) -> None:
        """``run`` sends a list of commands in one pipeline and returns their replies (by default on ``client``).

        ``brought``: the channels whose position a reconnecting client's token
        brought. Only there is a stream made anew (:func:`is_gap`'s ``created``)
        a gap: a websocket that stayed open while Redis restarted got what the
        worker's subscription got, and catches up as before.

        The worker's websockets pass a shared one
        (:class:`~ws4redis_uwsgi.bus.batched_reader.BatchedPipeline`): after a
        restart thousands resume from the same few positions at once.
        """
        self._client = client
        self._run = run or functools.partial(pipelined, client)
        self._cursors = [_Cursor(c, since, f"{since[0]}-{since[1]}") for c, since in positions.items()]
        self._brought = brought
        self._count = FIRST_PAGE_ENTRIES
        self._started = False
        #: Set by the first :meth:`next_page`: the history lost messages after a position.
        self.gap = False

    def next_page(self) -> Page | None:
        """The next messages in id order, or None once everything was handed out.

        :raises redis.RedisError: when Redis cannot be read.
        """
        while True:
            self._fill()
            if not any(c.buffered for c in self._cursors):
                return None
            page = self._merge()
            if page.messages:
                return page

    def _fill(self) -> None:
        """Read the next entries of every channel whose entries ran out and that may hold more."""
        dry = [c for c in self._cursors if not c.buffered and not c.exhausted]
        if not dry and self._started:
            return
        commands: list[tuple[Any, ...]] = [
            ("XRANGE", stream_key(cursor.channel), f"({cursor.after}", "+", "COUNT", self._count) for cursor in dry
        ]
        if not self._started:
            for cursor in self._cursors:
                commands.append(("XRANGE", stream_key(cursor.channel), "-", "+", "COUNT", 1))  # the oldest entry, if any
                commands.append(("GET", trimmed_key(cursor.channel)))
        replies = self._run(commands)
        entries_read, bytes_read = 0, 0
        for cursor, entries in zip(dry, replies[: len(dry)], strict=True):
            if len(entries) < self._count:
                cursor.exhausted = True
            for entry_id, fields in entries:
                cursor.after = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                message = _message_of(cursor.after, fields, cursor.channel)
                if message is not None:
                    cursor.buffered.append((envelope.parse_id(cursor.after), message))
                    bytes_read += len(message.payload)
                entries_read += 1
        if not self._started:
            self._started = True
            self._check_gap(replies[len(dry) :])
        if entries_read:
            # Aim the next reads at PAGE_BYTES, shared among the channels.
            average = max(1, bytes_read // entries_read)
            per_page = max(1, min(PAGE_ENTRIES, PAGE_BYTES // average))
            self._count = max(1, per_page // len(self._cursors))

    def _check_gap(self, replies: list[Any]) -> None:
        max_age_ms = int(settings.get("WS4REDIS_HISTORY_SECONDS") or 0) * 1000
        now_ms = int(time.time() * 1000)
        for cursor, oldest, trimmed in zip(self._cursors, replies[::2], replies[1::2], strict=True):
            oldest_id = _parse_stored_id(oldest[0][0]) if oldest else None
            marked = bool(trimmed) and trimmed[:1] == b"c"  # a stream made anew, not a trim
            created = _parse_stored_id(trimmed[1:]) if marked and cursor.channel in self._brought else None
            newest_trimmed = None if marked else _parse_stored_id(trimmed)
            self.gap = self.gap or is_gap(cursor.since, newest_trimmed, oldest_id, now_ms, max_age_ms, created)

    def _merge(self) -> Page:
        """Hand out buffered messages in id order while their order is certain.

        A channel that may hold more than it buffered must not run dry before
        the others: its next entry could come first. So the merge stops when
        such a channel's buffer is empty, and :meth:`_fill` reads it.
        """
        messages: list[envelope.BusMessage] = []
        nbytes = 0
        cursors = self._cursors
        while len(messages) < PAGE_ENTRIES and nbytes < PAGE_BYTES:
            if any(not c.buffered and not c.exhausted for c in cursors):
                break
            ready = [c for c in cursors if c.buffered]
            if not ready:
                break
            cursor = min(ready, key=lambda c: c.buffered[0][0])
            _, message = cursor.buffered.popleft()
            messages.append(message)
            nbytes += len(message.payload)
        return Page(messages, nbytes)


def recent(client: Any, channel: str, count: int) -> list[envelope.BusMessage]:
    """The last ``count`` messages of ``channel``'s history, oldest first (entries this package did not write skipped)."""
    entries = client.xrevrange(stream_key(channel), count=count)
    messages = (_message_of(_text(entry_id), fields, channel) for entry_id, fields in reversed(entries))
    return [m for m in messages if m is not None]


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _parse_stored_id(value: bytes | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        return envelope.parse_id(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _message_of(entry_id: str, fields: dict[bytes, bytes], channel: str) -> envelope.BusMessage | None:
    """The message a stream entry holds, or None (logged) for an entry this package did not write."""
    data = fields.get(b"m")
    try:
        if data is None:
            raise envelope.MalformedMessageError("stream entry without a message")
        message = envelope.decode(data, channel)
        if message.id != entry_id:
            raise envelope.MalformedMessageError("stream entry and message ids differ")
    except envelope.MalformedMessageError as exc:
        logger.warning("history entry %s skipped: %s", entry_id, exc)
        return None
    return message
