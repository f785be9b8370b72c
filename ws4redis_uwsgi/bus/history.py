"""Per-channel history in Redis Streams, so a client that reconnects misses nothing.

Every publish runs one Lua script in Redis that assigns the next message id
(one counter per Redis: ``"<ms>-<seq>"``, growing across all channels and
surviving a Redis restart because it follows the clock), appends the wrapped
message to each channel's stream (trimmed by length and age), publishes it
and, when asked, persists it: one round trip, atomic.

A client that reconnects with the last id it saw gets, for all its channels,
the messages after that id in id order; if the streams were trimmed past it,
it is told that the gap cannot be recovered. Settings:
``WS4REDIS_HISTORY_LENGTH`` (entries per channel) and
``WS4REDIS_HISTORY_SECONDS`` (age); both 0 turns history off.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .. import settings
from ..core import envelope
from ..core.channels import prefix_string

logger = logging.getLogger("ws4redis_uwsgi")

# KEYS: the id key, then n channels, their n streams, and n keys remembering
# the newest id trimmed from each stream (how a reconnecting client learns
# that it missed more than the history holds).
# ARGV: head, tail (the wrapped message around its id), expire, maxlen, max age in ms,
# how far (ms) the counter may be ahead of the clock and still be trusted.
# Returns {id, receivers, repaired}: repaired is 1 when the counter or a stream
# held something the script never wrote (garbage, an id far in the future) and
# was set right.
_PUBLISH = """
local n = (#KEYS - 1) / 3
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ahead = tonumber(ARGV[6])
local seq = 0
local repaired = 0
local last = redis.call('GET', KEYS[1])
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  if last_ms and #last_ms <= 15 and #last_seq <= 15 and tonumber(last_ms) <= ms + ahead then
    if ms <= tonumber(last_ms) then
      ms = tonumber(last_ms)
      seq = tonumber(last_seq) + 1
      if seq > 999999999999999 then
        ms = ms + 1
        seq = 0
      end
    end
  else
    -- Not an id this script wrote (or one from far in the future): start from the clock.
    repaired = 1
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', KEYS[1], id)
local message = ARGV[1] .. id .. ARGV[2]
local expire, maxlen, age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local receivers = 0
for i = 1, n do
  local channel, stream, trimmed = KEYS[1 + i], KEYS[1 + n + i], KEYS[1 + 2 * n + i]
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
    local cutoff = string.format('%d-0', ms - age)
    local older = redis.call('XREVRANGE', stream, '(' .. cutoff, '-', 'COUNT', 1)
    if #older > 0 then
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
  end
  if age > 0 then
    redis.call('PEXPIRE', stream, age)
    redis.call('PEXPIRE', trimmed, age)
  end
  receivers = receivers + redis.call('PUBLISH', channel, message)
  if expire > 0 then
    redis.call('SET', channel, message, 'EX', expire)
  end
end
return {id, receivers, repaired}
"""


def enabled() -> bool:
    return bool(settings.get("WS4REDIS_HISTORY_LENGTH") or settings.get("WS4REDIS_HISTORY_SECONDS"))


def stream_key(channel: str) -> str:
    """The stream holding ``channel``'s history: the prefix first, like every key."""
    prefix = prefix_string(settings.get("WS4REDIS_PREFIX"))
    return f"{prefix}history:{channel[len(prefix) :]}"


def trimmed_key(channel: str) -> str:
    """The key holding the newest id trimmed from ``channel``'s history."""
    prefix = prefix_string(settings.get("WS4REDIS_PREFIX"))
    return f"{prefix}history-trimmed:{channel[len(prefix) :]}"


def id_key() -> str:
    return f"{prefix_string(settings.get('WS4REDIS_PREFIX'))}ws4redis:last-id"


_PUBLISH_SHA = hashlib.sha1(_PUBLISH.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


def publish(client: redis.Redis, channels: Sequence[str], head: bytes, tail: bytes, expire: int) -> tuple[str, int]:
    """Publish one wrapped message with a new id; returns (id, receivers)."""
    keys = [id_key(), *channels, *(stream_key(c) for c in channels), *(trimmed_key(c) for c in channels)]
    max_length = int(settings.get("WS4REDIS_HISTORY_LENGTH") or 0)
    max_age_ms = int(settings.get("WS4REDIS_HISTORY_SECONDS") or 0) * 1000
    args: list[bytes | int] = [head, tail, int(expire or 0), max_length, max_age_ms, envelope.MAX_ID_AHEAD_MS]
    try:
        reply = client.evalsha(_PUBLISH_SHA, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:  # a new or restarted Redis: it learns the script once
        reply = client.eval(_PUBLISH, len(keys), *keys, *args)
    message_id, receivers, repaired = reply
    message_id = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
    if repaired:
        logger.warning(
            "the message id counter %s or a history stream of %s held an id this package never wrote; "
            "set right (resuming clients get !gap)",
            id_key(),
            ", ".join(channels),
        )
    return message_id, int(receivers)


def is_gap(
    since: tuple[int, int], newest_trimmed: tuple[int, int] | None, stream_exists: bool, now_ms: int, max_age_ms: int
) -> bool:
    """True when messages after ``since`` may have been trimmed away (pure).

    The publish script remembers the newest id it trimmed from each stream;
    a stream that is gone expired after ``max_age_ms`` of silence, which
    loses something only if ``since`` is older than that.
    """
    if stream_exists:
        return newest_trimmed is not None and newest_trimmed > since
    return max_age_ms > 0 and since[0] < now_ms - max_age_ms


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

    stream: str
    trimmed: str
    after: str  # the next XRANGE starts after this id
    buffered: deque[tuple[tuple[int, int], envelope.BusMessage]] = field(default_factory=deque)
    exhausted: bool = False


class BacklogReader:
    """What was published on a client's channels after an id, read a page at a time, in id order.

    The whole backlog of a resuming client can be large (a thousand entries
    of tens of KiB per channel): reading it at once would hold all of it in
    the worker while a slow client takes it. Each channel's stream is read
    with XRANGE ... COUNT, merged in id order (a message published to several
    of the client's channels is handed out once), and handed out a page at a
    time: the reader holds at most what the next page needs. The first page
    also tells whether the history still reaches back to ``since``
    (:attr:`gap`). Entries that are not messages of this package are skipped.
    """

    def __init__(self, client: redis.Redis, channels: Sequence[str], since: str) -> None:
        self._client = client
        self._since = since
        self._cursors = [_Cursor(stream_key(c), trimmed_key(c), since) for c in channels]
        self._count = FIRST_PAGE_ENTRIES
        self._started = False
        self._last: tuple[int, int] | None = None
        #: Set by the first :meth:`next_page`: the history lost messages after ``since``.
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
        pipe = self._client.pipeline(transaction=False)
        for cursor in dry:
            pipe.xrange(cursor.stream, min=f"({cursor.after}", max="+", count=self._count)
        if not self._started:
            for cursor in self._cursors:
                pipe.exists(cursor.stream)
                pipe.get(cursor.trimmed)
        replies = pipe.execute()
        entries_read, bytes_read = 0, 0
        for cursor, entries in zip(dry, replies[: len(dry)], strict=True):
            if len(entries) < self._count:
                cursor.exhausted = True
            for entry_id, fields in entries:
                cursor.after = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                message = _message_of(cursor.after, fields)
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
        since = envelope.parse_id(self._since)
        max_age_ms = int(settings.get("WS4REDIS_HISTORY_SECONDS") or 0) * 1000
        now_ms = int(time.time() * 1000)
        for exists, trimmed in zip(replies[::2], replies[1::2], strict=True):
            newest_trimmed = _parse_stored_id(trimmed)
            self.gap = self.gap or is_gap(since, newest_trimmed, bool(exists), now_ms, max_age_ms)

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
            order, message = cursor.buffered.popleft()
            if order == self._last:
                continue  # the same message on another of the client's channels
            self._last = order
            messages.append(message)
            nbytes += len(message.payload)
        return Page(messages, nbytes)


def _parse_stored_id(value: bytes | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        return envelope.parse_id(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _message_of(entry_id: str, fields: dict[bytes, bytes]) -> envelope.BusMessage | None:
    """The message a stream entry holds, or None (logged) for an entry this package did not write."""
    data = fields.get(b"m")
    try:
        if data is None:
            raise envelope.MalformedMessageError("stream entry without a message")
        message = envelope.decode(data)
        if message.id != entry_id:
            raise envelope.MalformedMessageError("stream entry and message ids differ")
    except envelope.MalformedMessageError as exc:
        logger.warning("history entry %s skipped: %s", entry_id, exc)
        return None
    return message
