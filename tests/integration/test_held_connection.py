"""HeldConnection: the batched readers' own connection, against a real redis-server (restarted, refusing, slow)."""

from __future__ import annotations

import pytest
import redis

from ws4redis_uwsgi.bus.held_connection import HeldConnection

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_replies_are_what_the_client_would_give(private_redis) -> None:
    client = redis.Redis.from_url(private_redis.url)
    entry = client.xadd("held:stream", {"m": "one"})
    client.set("held:key", "value")
    held = HeldConnection(client)
    commands = [("XRANGE", "held:stream", "-", "+", "COUNT", 5), ("GET", "held:key"), ("MGET", "held:key", "held:none")]
    assert held.execute(commands) == [client.xrange("held:stream", count=5), b"value", [b"value", None]]
    assert held.execute(commands)[0] == [(entry, {b"m": b"one"})]


def test_an_error_reply_raises_after_every_reply_was_read_and_the_next_command_is_in_step(private_redis) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.set("held:text", "not a stream")
    client.set("held:key", "value")
    held = HeldConnection(client)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        held.execute([("XRANGE", "held:text", "-", "+"), ("GET", "held:key"), ("GET", "held:key")])
    assert held.execute([("GET", "held:key")]) == [b"value"]


def test_one_connection_serves_every_call(private_redis) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.client_setname("observer")
    held = HeldConnection(client)
    before = len(client.client_list())
    for _ in range(20):
        held.execute([("GET", "held:key")])
    assert len(client.client_list()) == before + 1


def test_after_redis_restarted_the_next_call_reconnects_and_answers(private_redis) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
    held = HeldConnection(client)
    client.set("held:key", "before")
    assert held.execute([("GET", "held:key")]) == [b"before"]
    private_redis.kill()
    private_redis.start()
    client.set("held:key", "after")
    # The held connection was cut while it idled: the call goes out again on a new one.
    assert held.execute([("GET", "held:key")]) == [b"after"]


def test_a_redis_that_does_not_answer_raises_within_the_timeout_once_and_the_next_call_starts_clean(private_redis) -> None:
    import time

    client = redis.Redis.from_url(private_redis.url, socket_timeout=0.5)
    client.set("held:key", "value")
    held = HeldConnection(client)
    blocker = redis.Redis.from_url(private_redis.url)
    # Redis holds every client's commands for 1.5 s: the read times out after 0.5 s and is not sent again.
    blocker.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        held.execute([("GET", "held:key")])
    assert time.monotonic() - started < 0.9  # once: a second try would take 1 s
    blocker.execute_command("CLIENT", "UNPAUSE")
    # The late reply of the timed-out GET must not be taken for the next command's.
    client.set("held:other", "other")
    assert held.execute([("GET", "held:other")]) == [b"other"]
