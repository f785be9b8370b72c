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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from . import envelope, settings
from .channels import prefix_string

# KEYS: the id key, then n channels, their n streams, and n keys remembering
# the newest id trimmed from each stream (how a reconnecting client learns
# that it missed more than the history holds).
# ARGV: head, tail (the wrapped message around its id), expire, maxlen, max age in ms.
_PUBLISH = """
local n = (#KEYS - 1) / 3
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[1])
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  if ms <= tonumber(last_ms) then
    ms = tonumber(last_ms)
    seq = tonumber(last_seq) + 1
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', KEYS[1], id)
local message = ARGV[1] .. id .. ARGV[2]
local expire, maxlen, age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local receivers = 0
for i = 1, n do
  local channel, stream, trimmed = KEYS[1 + i], KEYS[1 + n + i], KEYS[1 + 2 * n + i]
  redis.call('XADD', stream, id, 'm', message)
  local newest_gone = nil
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
return {id, receivers}
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


# One registered script per client; the client is kept alive with it so its id stays unique.
_scripts: dict[int, tuple[redis.Redis, Any]] = {}


def publish(client: redis.Redis, channels: Sequence[str], head: bytes, tail: bytes, expire: int) -> tuple[str, int]:
    """Publish one wrapped message with a new id; returns (id, receivers)."""
    if id(client) not in _scripts:
        _scripts[id(client)] = (client, client.register_script(_PUBLISH))
    script = _scripts[id(client)][1]
    keys = [id_key(), *channels, *(stream_key(c) for c in channels), *(trimmed_key(c) for c in channels)]
    max_length = int(settings.get("WS4REDIS_HISTORY_LENGTH") or 0)
    max_age_ms = int(settings.get("WS4REDIS_HISTORY_SECONDS") or 0) * 1000
    args = [head, tail, int(expire or 0), max_length, max_age_ms]
    message_id, receivers = script(keys=keys, args=args)
    return message_id.decode() if isinstance(message_id, bytes) else str(message_id), int(receivers)


@dataclass(frozen=True)
class Backlog:
    """What a reconnecting client missed: the messages in id order, or a gap."""

    messages: tuple[envelope.BusMessage, ...] = ()
    gap: bool = False


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


def missed_since(client: redis.Redis, channels: Sequence[str], since: str) -> Backlog:
    """Everything published on ``channels`` after message id ``since``, merged in id order."""
    since_order = envelope.parse_id(since)
    pipe = client.pipeline(transaction=False)
    for channel in channels:
        pipe.xrange(stream_key(channel), min=f"({since}", max="+")
        pipe.exists(stream_key(channel))
        pipe.get(trimmed_key(channel))
    replies = pipe.execute()
    gap = False
    found: dict[str, envelope.BusMessage] = {}
    max_age_ms = int(settings.get("WS4REDIS_HISTORY_SECONDS") or 0) * 1000
    now_ms = int(time.time() * 1000)
    for entries, exists, trimmed in zip(replies[::3], replies[1::3], replies[2::3], strict=True):
        for _entry_id, fields in entries:
            message = envelope.decode(fields[b"m"])
            if message.id:
                found[message.id] = message  # one message on several channels is sent once
        newest_trimmed = envelope.parse_id(trimmed.decode()) if trimmed else None
        gap = gap or is_gap(since_order, newest_trimmed, bool(exists), now_ms, max_age_ms)
    ordered = sorted(found.values(), key=lambda m: m.order or (0, 0))
    return Backlog(tuple(ordered), gap)
