"""The worker's subscription hub against a real redis-server that goes away and comes back, in this process."""

from __future__ import annotations

import gc
import itertools
import time

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.servers import wait_for
from ws4redis_uwsgi.bus import hub as hub_module
from ws4redis_uwsgi.bus.hub import SubscriptionHub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Listener:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.resyncs = 0

    def deliver(self, message) -> None:
        self.messages.append(message.payload)

    def resync(self) -> None:
        self.resyncs += 1


def run_gevent_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Let the hub's greenlet run while waiting for ``condition``."""
    wait_for(lambda: gevent.sleep(0.01) or condition(), timeout, what)


@pytest.fixture(params=[None, 1.0], ids=["hiredis-reads", "redis-py-reads"])
def redis_and_hub(private_redis, request):
    """A Redis and a hub on it; the hub reads the socket itself, or (with a socket timeout) through redis-py's PubSub."""
    server = private_redis
    timeout = request.param
    hub = SubscriptionHub(
        lambda: redis.Redis.from_url(server.url, socket_timeout=timeout, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)),
        min_backoff=0.01,
        max_backoff=0.05,
    )
    yield server, hub
    hub.close()


def test_channels_left_during_an_outage_leave_no_state(redis_and_hub):
    server, hub = redis_and_hub
    staying = Listener()
    hub.add(staying, ["stays"])
    assert hub.wait_subscribed(["stays"], 5)
    empty = hub.channel_state_size()  # "stays": a listener set, a subscription, a confirmation
    server.kill()
    run_gevent_until(lambda: not hub.connected, what="the hub to notice")
    for i in range(200):
        visitor = Listener()
        hub.add(visitor, [f"visit:{i}"])
        assert not hub.wait_subscribed([f"visit:{i}"], 0.001)  # Redis is down: the handshake goes on without
        hub.remove(visitor, [f"visit:{i}"])
    assert hub.channel_state_size() <= empty + 1  # "stays" may wait for its catch-up, nothing for the visitors
    server.start()
    run_gevent_until(lambda: hub.confirmed(["stays"]), what="the subscription after the restart")
    assert hub.channel_state_size() == empty
    assert staying.resyncs == 1  # told once to catch up with what went by


def test_a_listener_that_arrives_during_an_outage_is_told_to_catch_up(redis_and_hub):
    server, hub = redis_and_hub
    first = Listener()
    hub.add(first, ["a"])
    assert hub.wait_subscribed(["a"], 5)
    server.kill()
    run_gevent_until(lambda: not hub.connected, what="the hub to notice")
    late = Listener()
    hub.add(late, ["b"])
    server.start()
    run_gevent_until(lambda: hub.confirmed(["a", "b"]), what="the subscriptions after the restart")
    assert (first.resyncs, late.resyncs) == (1, 1)
    newcomer = Listener()  # Redis is up: a new listener has nothing to catch up with
    hub.add(newcomer, ["c"])
    assert hub.wait_subscribed(["c"], 5)
    run_gevent_until(lambda: True)
    assert newcomer.resyncs == 0
    redis.Redis.from_url(server.url).publish("c", b"hello")
    run_gevent_until(lambda: newcomer.messages == [b"hello"], what="the message")


def test_a_listener_that_raises_costs_the_others_nothing_and_the_subscription_stays(redis_and_hub):
    """One broken listener (a site's subscriber class with a bug) neither keeps a message from the others nor
    makes the hub drop its connection to Redis (which would make every websocket of the worker catch up)."""
    server, hub = redis_and_hub

    class Broken(Listener):
        def deliver(self, message) -> None:
            raise RuntimeError("broken listener")

    first, broken, last = Listener(), Broken(), Listener()
    for listener in (first, broken, last):
        hub.add(listener, ["shared"])
    assert hub.wait_subscribed(["shared"], 5)
    publisher = redis.Redis.from_url(server.url)
    for text in (b"one", b"two"):
        publisher.publish("shared", text)
    run_gevent_until(lambda: first.messages == last.messages == [b"one", b"two"], what="both messages to both")
    assert broken.resyncs == 2 and first.resyncs == last.resyncs == 0
    assert hub.disconnects == 0 and hub.connected


def test_a_burst_to_many_listeners_lets_the_rest_of_the_worker_run_every_few_thousand_deliveries(redis_and_hub, monkeypatch):
    """With 10,000 websockets on a channel, 64 messages in a row held the event loop for seconds: no handshake got in."""
    import ws4redis_uwsgi.bus.hub as hub_module

    monkeypatch.setattr(hub_module, "DRAIN_DELIVERIES", 500)
    server, hub = redis_and_hub
    delivered = [0]

    class Counting:
        def deliver(self, message) -> None:
            delivered[0] += 1

        def resync(self) -> None:
            pass

    listeners = [Counting() for _ in range(200)]
    for listener in listeners:
        hub.add(listener, ["busy"])
    assert hub.wait_subscribed(["busy"], 5)
    pipe = redis.Redis.from_url(server.url).pipeline(transaction=False)
    for i in range(60):  # fewer than DRAIN_BATCH messages: only the count of deliveries can make the hub yield
        pipe.publish("busy", f"m{i}")
    pipe.execute()
    seen: list[int] = []

    def other_work() -> None:  # what a handshake or a websocket's turn would be
        while delivered[0] < 60 * 200:
            seen.append(delivered[0])
            gevent.sleep(0)
        seen.append(delivered[0])

    gevent.spawn(other_work).join(timeout=20)
    assert delivered[0] == 60 * 200
    steps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(steps) <= 500 + 200  # at most one message past the bound between two turns of the rest


def numsub(server, channel: str) -> int:
    return int(dict(redis.Redis.from_url(server.url).pubsub_numsub(channel)).get(channel.encode(), 0))


def subscribes(server) -> int:
    stats = redis.Redis.from_url(server.url).info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


def test_a_channel_whose_last_websocket_closed_stays_subscribed_a_while_for_the_next_page(redis_and_hub):
    server, hub = redis_and_hub
    hub.linger = 0.5
    baseline = hub.channel_state_size()
    first = Listener()
    hub.add(first, ["page"])
    assert hub.wait_subscribed(["page"], 5)
    subscribed_once = subscribes(server)
    hub.remove(first, ["page"], linger=True)  # the websocket of one page closes
    assert hub.channel_count() == 0 and numsub(server, "page") == 1
    following = Listener()
    hub.add(following, ["page"])  # the next page's websocket
    assert hub.confirmed(["page"])  # no wait: nothing was unsubscribed
    redis.Redis.from_url(server.url).publish("page", b"hello")
    run_gevent_until(lambda: following.messages == [b"hello"], what="the message to the next page's websocket")
    assert subscribes(server) == subscribed_once
    hub.remove(following, ["page"], linger=True)
    run_gevent_until(lambda: numsub(server, "page") == 0, what="the subscription to go once the linger ran out")
    assert hub.channel_state_size() == baseline


def test_a_subscribed_channel_keeps_no_object_the_garbage_collector_walks_but_its_listener_set(redis_and_hub):
    """A worker holds a channel per logged-in user, for as long as their websockets are open.

    Python's full collections walk every such object (each time the long-lived ones grew by a
    quarter), so what a channel keeps once subscribed is what every websocket pays again and again.
    """
    _server, hub = redis_and_hub
    listeners = [Listener() for _ in range(300)]
    channels = [f"user:{i}" for i in range(300)]
    hub.add(Listener(), ["warm-up"])  # the hub's connection and its per-process state
    assert hub.wait_subscribed(["warm-up"], 5)
    gc.collect()
    before = len(gc.get_objects())
    for listener, channel in zip(listeners, channels, strict=True):
        hub.add(listener, [channel])
    assert hub.wait_subscribed(channels, 10)
    gc.collect()
    per_channel = (len(gc.get_objects()) - before) / len(channels)
    assert per_channel <= 1.2, f"{per_channel:.2f} objects per subscribed channel: its listener set, and what else?"


def test_a_channel_left_without_linger_is_unsubscribed_at_once(redis_and_hub):
    server, hub = redis_and_hub
    hub.linger = 5.0  # not for this one
    listener = Listener()
    hub.add(listener, ["left"])
    assert hub.wait_subscribed(["left"], 5)
    hub.remove(listener, ["left"])  # a group the user left
    run_gevent_until(lambda: numsub(server, "left") == 0, 1, "the unsubscription")


def test_a_burst_of_new_channels_shares_its_subscribe_commands_and_a_lone_one_goes_at_once(redis_and_hub, monkeypatch):
    """A burst of first visits, each with its user's channel: held together; a handshake after a quiet while waits for nothing."""
    server, hub = redis_and_hub
    monkeypatch.setattr(hub_module, "SUBSCRIBE_INTERVAL", 1.0)  # long enough to tell a hold from a round trip
    hub.add(Listener(), ["warm-up"])
    assert hub.wait_subscribed(["warm-up"], 5)
    gevent.sleep(1.1)
    before = subscribes(server)

    def handshake(index: int) -> bool:
        gevent.sleep(index * 0.002)  # 200 handshakes over 0.4 s
        channel = f"user:{index}"
        hub.add(Listener(), [channel])
        return hub.wait_subscribed([channel], 5)

    burst = [gevent.spawn(handshake, i) for i in range(200)]
    gevent.joinall(burst, timeout=10)
    assert all(g.value for g in burst)
    assert subscribes(server) - before == 2  # the first at once, the 199 after it held together
    gevent.sleep(1.1)  # quiet
    started = time.monotonic()
    hub.add(Listener(), ["lone"])
    assert hub.wait_subscribed(["lone"], 0.5) and time.monotonic() - started < 0.5  # not held
    hub.add(Listener(), ["right after"])
    assert not hub.wait_subscribed(["right after"], 0.3)  # held, with whatever else comes within the second
    assert hub.wait_subscribed(["right after"], 2)
