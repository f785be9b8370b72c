"""A rolling upgrade: publishers of the previous version (its publish script, as it ran) beside this one's.

The previous version gave every message an id from one counter per Redis
(``{p}ws4redis:last-id``) and appended it to each channel's stream with that
id. While such publishers still run, this version's ids must follow that
counter, or the previous version's next id would come before one of ours on
the same channel: its stream would refuse it (and be started again), and
clients would take it for a repeat. Nothing may be lost or repeated, and the
counter must expire once the previous version stopped writing it.
"""

from __future__ import annotations

import random

import pytest

from tests.integration.helpers import client, facility, recv, split
from ws4redis_uwsgi.bus import history
from ws4redis_uwsgi.core import envelope
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: The publish script of the previous version (commit c792015), verbatim.
PREVIOUS_SCRIPT = """
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


def publish_as_the_previous_version(redis_client, channel: str, text: str) -> None:
    """What the previous version's RedisPublisher did for one channel, history on, nothing persisted."""
    head, tail = envelope.encode_parts(text.encode())
    prefix = "test:"
    keys = [
        "test:ws4redis:last-id",
        channel,
        f"test:history:{channel[len(prefix) :]}",
        f"test:history-trimmed:{channel[len(prefix) :]}",
    ]
    message_id, _, repaired = redis_client.eval(PREVIOUS_SCRIPT, len(keys), *keys, head, tail, 0, 1000, 3600_000, 60_000)
    assert repaired == 0, f"the previous version had to start a stream again at {message_id}"


def test_publishers_of_both_versions_on_the_same_channels_lose_and_repeat_nothing(uwsgi_server, redis_client, login):
    fac = facility()
    broadcast, john = f"test:broadcast:{fac}", f"test:user:john:{fac}"
    redis_client.set("test:ws4redis:last-id", b"1-0")  # the previous version ran on this Redis
    rng = random.Random(3)
    sent: dict[str, list[str]] = {broadcast: [], john: []}
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&subscribe-user&resume=", login("john")) as ws:
        for i in range(400):  # as fast as possible: many in the same millisecond
            channel = rng.choice([broadcast, john])
            text = f"m{i}"
            if rng.random() < 0.5:
                publish_as_the_previous_version(redis_client, channel, text)
            elif channel == broadcast:
                RedisPublisher(facility=fac, broadcast=True).publish_message(text, expire=0)
            else:
                RedisPublisher(facility=fac, users=["john"]).publish_message(text, expire=0)
            sent[channel].append(text)
        got = [split(recv(ws)) for _ in range(400)]
        token = got[-1][0]
    payloads = [p for _, p in got]
    assert sorted(payloads, key=lambda p: int(p[1:])) == [f"m{i}" for i in range(400)]  # each once
    for channel, texts in sent.items():
        assert [p for p in payloads if p in set(texts)] == texts  # in order on each channel
        stream = [e[b"m"].rpartition(b"\n")[2].decode() for _, e in redis_client.xrange(history.stream_key(channel))]
        assert stream == texts  # every one in its stream, in publish order: ids grew
    # The last one resumes after everything, whichever version published it.
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&subscribe-user&resume={token}", login("john")) as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("after", expire=0)
        assert split(recv(ws))[1] == "after"
    # The counter was moved on by this version too, and expires once the previous version stopped.
    ttl = redis_client.pttl("test:ws4redis:last-id")
    assert 0 < ttl <= history.LEGACY_COUNTER_TTL_MS
    redis_client.delete("test:ws4redis:last-id")


def test_a_client_of_a_previous_version_worker_resumes_on_this_version(uwsgi_server, redis_client):
    """Its token is the last id it got (one counter for all channels): it gets exactly what came after."""
    fac = facility()
    channel = f"test:broadcast:{fac}"
    redis_client.set("test:ws4redis:last-id", b"1-0")
    publish_as_the_previous_version(redis_client, channel, "seen")
    ((seen_id, _),) = redis_client.xrange(history.stream_key(channel))
    publish_as_the_previous_version(redis_client, channel, "missed, old")
    RedisPublisher(facility=fac, broadcast=True).publish_message("missed, new", expire=0)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={seen_id.decode()}") as ws:
        assert [split(recv(ws))[1] for _ in range(2)] == ["missed, old", "missed, new"]
    redis_client.delete("test:ws4redis:last-id")
