"""What a publish sends, built without I/O and shared by the sync and the async publishers; the async clients' forms."""

from __future__ import annotations

import logging

import pytest
import redis
import redis.asyncio
from django.test import override_settings
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.crc import key_slot

from ws4redis_uwsgi.bus import history, scripts
from ws4redis_uwsgi.bus.async_client import make_async_client
from ws4redis_uwsgi.bus.store import SELF, STORE_AND_PUBLISH, RedisStore, WithHistory, WithoutHistory, needs_identity
from ws4redis_uwsgi.core import envelope

STANDALONE = redis.Redis(host="127.0.0.1", port=1)  # never connects: only its kind matters


def async_cluster() -> AsyncRedisCluster:
    return AsyncRedisCluster(host="127.0.0.1", port=1)  # reads no slots until its first command


# -- without history ---------------------------------------------------------------------------


def test_without_history_one_script_stores_and_publishes_every_channel():
    calls = WithoutHistory(("a", "b"), 30, b"payload").calls(STANDALONE)
    assert calls.script is STORE_AND_PUBLISH
    assert calls.keys == [["a", "b"]] and calls.args == [b"payload", 30, "PUBLISH"]
    assert calls.command(calls.keys[0]) == ("EVALSHA", STORE_AND_PUBLISH.sha, 2, "a", "b", b"payload", 30, "PUBLISH")
    assert WithoutHistory.result(calls, [5]) == (None, 5)


@override_settings(WS4REDIS_WAIT_REPLICAS=1, WS4REDIS_WAIT_TIMEOUT=0.5)
def test_without_history_one_call_per_slot_sharded_on_a_cluster_and_acknowledged_when_asked():
    channels = ("{broadcast:f}", "{user:john:f}", "{user:mary:f}")
    calls = WithoutHistory(channels, 0, b"p").calls(async_cluster())
    assert sorted(calls.keys) == sorted([c] for c in channels)  # three slots
    assert calls.args == [b"p", 0, "SPUBLISH"]
    assert (calls.replicas, calls.timeout_ms) == (1, 500)
    assert WithoutHistory.result(calls, [1, 0, 4]) == (None, 5)


# -- the publish script's calls ------------------------------------------------------------------


@override_settings(WS4REDIS_PREFIX="p", WS4REDIS_HISTORY_LENGTH=10, WS4REDIS_HISTORY_SECONDS=60)
def test_one_call_for_one_redis_with_the_legacy_counter_last():
    calls = history.script_calls(STANDALONE, ["p:broadcast:f", "p:user:john:f"], b"head", b"tail", 5)
    assert calls.keys == [
        [
            "p:broadcast:f",
            "p:user:john:f",
            "p:history:broadcast:f",
            "p:history:user:john:f",
            "p:history-trimmed:broadcast:f",
            "p:history-trimmed:user:john:f",
            "p:ws4redis:last-id",
        ]
    ]
    assert calls.args == [b"head", b"tail", 5, 10, 60_000, envelope.MAX_ID_AHEAD_MS, "PUBLISH", history.LEGACY_COUNTER_TTL_MS]
    assert calls.replicas == 0
    assert calls.command(calls.keys[0]) == ("EVALSHA", history.PUBLISH.sha, 7, *calls.keys[0], *calls.args)


@override_settings(WS4REDIS_PREFIX=None, WS4REDIS_WAIT_REPLICAS=2, WS4REDIS_WAIT_TIMEOUT=0.25)
def test_one_call_per_slot_on_a_cluster_sharded_and_without_the_legacy_counter():
    channels = ["{broadcast:f}", "{user:john:f}", "{user:mary:f}"]
    calls = history.script_calls(async_cluster(), channels, b"h", b"t", 0)
    by_slot = {key_slot(keys[0].encode()): keys for keys in calls.keys}
    assert len(calls.keys) == len({key_slot(c.encode()) for c in channels}) == 3
    for keys in by_slot.values():
        assert len(keys) == 3 and len({key_slot(k.encode()) for k in keys}) == 1  # a script never spans slots
    assert calls.args[6] == "SPUBLISH"
    assert (calls.replicas, calls.timeout_ms) == (2, 250)


def test_the_result_is_the_first_id_and_the_receivers_summed(caplog):
    calls = scripts.ScriptCalls(history.PUBLISH, ("a", "b"), [["a"], ["b"]], [], 0, 0)
    assert history.publish_result(calls, [[b"17-3", 2, 0], [b"17-4", 1, 0]]) == ("17-3", 3)
    with caplog.at_level(logging.WARNING, logger="ws4redis_uwsgi"):
        assert history.publish_result(calls, [["17-5", 0, 0], ["17-6", 0, 1]]) == ("17-5", 0)
    assert "a, b" in caplog.text and "started again" in caplog.text


def test_wait_replies():
    calls = scripts.ScriptCalls(history.PUBLISH, ("a",), [["a"]], [], 2, 100)
    scripts.check_acknowledged(calls, 2)
    with pytest.raises(scripts.NotReplicatedError, match=r"1 of 2 replicas .* 100 ms"):
        scripts.check_acknowledged(calls, 1)
    with pytest.raises(redis.ResponseError):
        scripts.check_acknowledged(calls, redis.ResponseError("WAIT cannot be used with replica instances"))
    assert scripts.is_no_script(redis.exceptions.NoScriptError("NOSCRIPT")) and not scripts.is_no_script(1)


# -- what a store sends -----------------------------------------------------------------------


def store_on(*channels: str) -> RedisStore:
    store = RedisStore(STANDALONE)
    store._publishers = list(channels)
    return store


@override_settings(WS4REDIS_HISTORY_LENGTH=0, WS4REDIS_HISTORY_SECONDS=0, WS4REDIS_EXPIRE=40)
def test_without_history_the_whole_envelope_and_the_default_expire():
    outgoing = store_on("a")._outgoing("hé", None, False, None)
    assert isinstance(outgoing, WithoutHistory) and outgoing.expire == 40
    message = envelope.decode(outgoing.payload, "a")
    assert message.payload == "hé".encode() and not message.binary and message.id is None
    assert store_on("a")._outgoing("x", -5, True, None).expire == 0  # type: ignore[union-attr]


@override_settings(WS4REDIS_HISTORY_LENGTH=10, WS4REDIS_HEARTBEAT="--heartbeat--")
def test_with_history_the_envelope_around_the_id_and_a_uid_for_several_channels():
    one = store_on("a")._outgoing(b"data", 0, True, None)
    assert isinstance(one, WithHistory)
    message = envelope.decode(one.head + b"1-2" + one.tail, "a")
    assert (message.payload, message.binary, message.id, message.uid) == (b"data", True, "1-2", None)
    several = store_on("a", "b")._outgoing(b"data", 0, False, None)
    assert isinstance(several, WithHistory) and envelope.decode(several.head + b"1-2" + several.tail, "a").uid
    assert store_on("a")._outgoing("--heartbeat--", 0, False, None) is None  # answered, never published
    assert store_on()._outgoing("to nobody", 0, False, None) is None


def test_what_needs_the_request():
    request = object()
    assert needs_identity(request, users=[SELF]) and needs_identity(request, groups=True)
    assert needs_identity(request, sessions=("x", SELF), facility="f")
    assert not needs_identity(None, users=[SELF])
    assert not needs_identity(request, users=["john"], broadcast=True)


# -- the async clients' forms ----------------------------------------------------------------


def test_a_url_or_a_dict_makes_one_asyncio_redis_with_the_default_timeouts():
    client = make_async_client("redis://127.0.0.1:7/2")
    assert isinstance(client, redis.asyncio.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (7, 2, 5.0)
    client = make_async_client({"host": "h", "port": 8, "socket_timeout": 1.5})
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 1.5


def test_sentinel_and_cluster_forms():
    client = make_async_client("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3")
    assert isinstance(client, redis.asyncio.Redis) and isinstance(client.connection_pool, AsyncSentinelPool)
    assert client.connection_pool.service_name == "mymaster"
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert [s.connection_pool.connection_kwargs["port"] for s in client.connection_pool.sentinel_manager.sentinels] == [
        26379,
        26380,
    ]
    cluster = make_async_client({"cluster": True, "startup_nodes": [("n1", 7000), ("n2", 7001)], "password": "pw"})
    assert isinstance(cluster, AsyncRedisCluster)
    assert sorted(n.name for n in cluster.nodes_manager.startup_nodes.values()) == ["n1:7000", "n2:7001"]


def test_an_option_redis_asyncio_does_not_take_is_refused():
    with pytest.raises(ValueError, match=r"'cache_config' not supported by redis\.asyncio"):
        make_async_client({"host": "h", "cache_config": object()})
