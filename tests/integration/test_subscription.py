"""The hub's connection (ws4redis_uwsgi.bus.subscription) against a real redis-server: what it sends, what it reads back."""

from __future__ import annotations

import socket

import pytest
import redis

from tests.servers import wait_for
from ws4redis_uwsgi.bus.subscription import PubSubSubscription, RawSubscription, Reply, Subscription, open_subscription

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def collect(subscription: Subscription, count: int) -> list[Reply]:
    """The next ``count`` replies, read as the hub reads them: whatever the socket holds, again until there are enough."""
    got: list[Reply] = []
    wait_for(lambda: got.extend(subscription.replies()) or len(got) >= count, 5, f"{count} replies")
    assert len(got) == count, got
    return got


def test_a_plain_connection_is_read_by_hiredis_and_gives_what_redis_py_gives(private_redis):
    publisher = redis.Redis.from_url(private_redis.url)
    url = private_redis.url
    subscriptions = {
        "hiredis, RESP2": open_subscription(redis.Redis.from_url(url, socket_timeout=None, protocol=2), sharded=False),
        "hiredis, RESP3": open_subscription(redis.Redis.from_url(url, socket_timeout=None, protocol=3), sharded=False),
        "redis-py": open_subscription(redis.Redis.from_url(url, socket_timeout=5), sharded=False),
    }
    assert isinstance(subscriptions["hiredis, RESP2"], RawSubscription)
    assert isinstance(subscriptions["hiredis, RESP3"], RawSubscription)
    assert isinstance(subscriptions["redis-py"], PubSubSubscription)  # a socket timeout outside gevent: redis-py reads
    big = b"x" * 300_000  # several reads, parsed whole
    for subscription in subscriptions.values():
        subscription.subscribe(["a", "b"])
        assert collect(subscription, 2) == [Reply("subscribe", "a", 1), Reply("subscribe", "b", 2)]
    assert publisher.publish("a", "one") == 3 and publisher.publish("b", big) == 3
    for subscription in subscriptions.values():
        assert collect(subscription, 2) == [Reply("message", "a", b"one"), Reply("message", "b", big)]
        subscription.ping()
        assert [reply.kind.lower() for reply in collect(subscription, 1)] == ["pong"]
        subscription.unsubscribe(["a"])
        assert collect(subscription, 1) == [Reply("unsubscribe", "a", 1)]
        assert list(subscription.replies()) == []  # nothing more: it does not wait
        subscription.close()


def test_a_connection_redis_closes_raises_a_connection_error_and_is_given_back(private_redis):
    client = redis.Redis.from_url(private_redis.url, socket_timeout=None)
    subscription = open_subscription(client, sharded=False)
    assert isinstance(subscription, RawSubscription)
    subscription.subscribe(["a"])
    collect(subscription, 1)
    redis.Redis.from_url(private_redis.url).client_kill_filter(_type="pubsub")
    with pytest.raises(redis.ConnectionError):
        wait_for(lambda: list(subscription.replies()) and False, 5, "the connection to fail")
    subscription.close()
    assert client.connection_pool._in_use_connections == set()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("timeout", "kind"), [(None, RawSubscription), (5.0, PubSubSubscription)])
def test_sharded_subscriptions_send_one_command_per_channel(private_redis, timeout, kind):
    """A Cluster takes one slot per SSUBSCRIBE: two channels are two commands (a standalone Redis 7 has SSUBSCRIBE too)."""
    subscription = open_subscription(redis.Redis.from_url(private_redis.url, socket_timeout=timeout), sharded=True)
    assert isinstance(subscription, kind)
    subscription.subscribe(["{a}x", "{b}y"])
    assert collect(subscription, 2) == [Reply("ssubscribe", "{a}x", 1), Reply("ssubscribe", "{b}y", 2)]
    redis.Redis.from_url(private_redis.url).spublish("{b}y", "hello")
    assert collect(subscription, 1) == [Reply("smessage", "{b}y", b"hello")]
    subscription.close()


def test_a_subscription_larger_than_the_socket_takes_at_once_is_sent_whole(private_redis):
    """After a reconnect the hub subscribes every channel it holds in one command: megabytes, more than one write takes."""
    subscription = open_subscription(redis.Redis.from_url(private_redis.url, socket_timeout=None), sharded=False)
    assert isinstance(subscription, RawSubscription)
    # A small send buffer, as on a busy link: the write without waiting takes part, redis-py's waiting write the rest.
    subscription._raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    names = [f"ws4redis:user:someone-with-a-long-name-{i:06d}:facility" for i in range(40_000)]  # about 2.2 MB
    subscription.subscribe(names)
    got = collect(subscription, len(names))
    assert [reply.channel for reply in got] == names and got[-1] == Reply("subscribe", names[-1], len(names))
    subscription.close()
