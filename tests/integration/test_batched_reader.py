"""BatchedReader: the stored-message reads of concurrent handshakes share one MGET, against a real Redis."""

from __future__ import annotations

import gevent
import pytest
import redis

from tests.servers import RedisServer, free_port, wait_for
from ws4redis_uwsgi.bus.batched_reader import BatchedPipeline, BatchedReader
from ws4redis_uwsgi.bus.hub import SubscriptionHub

pytestmark = pytest.mark.integration


def calls(client: redis.Redis, command: str) -> int:
    """How many ``command``s Redis executed since its statistics were reset (what reached the server, by any path)."""
    return int(client.info("commandstats").get(f"cmdstat_{command.lower()}", {}).get("calls", 0))


def test_concurrent_reads_share_one_mget_and_each_gets_its_own_values(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.mset({"batch:a": b"A", "batch:b": b"B"})
    client.delete("batch:missing")
    client.config_resetstat()
    reader = BatchedReader(client)
    wanted = [["batch:a"], ["batch:b", "batch:a"], ["batch:missing"], ["batch:a", "batch:missing", "batch:b"]]
    jobs = [gevent.spawn(reader.mget, keys) for keys in wanted]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert [job.value for job in jobs] == [[b"A"], [b"B", b"A"], [None], [b"A", None, b"B"]]
    assert calls(client, "MGET") == 1
    # Later reads get a round trip of their own.
    assert reader.mget(["batch:b"]) == [b"B"]
    assert calls(client, "MGET") == 2


def test_a_failed_mget_raises_in_every_waiting_caller() -> None:
    dead = BatchedReader(redis.Redis(port=free_port(), socket_connect_timeout=1))
    jobs = [gevent.spawn(dead.mget, [f"k{i}"]) for i in range(3)]
    gevent.joinall(jobs, timeout=10)
    assert all(isinstance(job.exception, redis.ConnectionError) for job in jobs)


def test_a_reader_that_never_answers_ends_the_wait_with_a_timeout(monkeypatch) -> None:
    import ws4redis_uwsgi.bus.batched_reader as batched_reader

    monkeypatch.setattr(batched_reader, "READ_TIMEOUT", 0.2)
    reader = BatchedReader(redis.Redis(port=free_port()))
    reader._serve = lambda: gevent.sleep(10)  # type: ignore[method-assign]  # as if stuck or killed
    with pytest.raises(redis.TimeoutError):
        reader.mget(["k"])


# -- the short memory of stored messages: against a real hub subscribed on a real Redis -------------------


class Listener:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def deliver(self, message) -> None:
        self.messages.append(message.payload)

    def resync(self) -> None:
        pass


@pytest.fixture
def hub_on(redis_server):
    hub = SubscriptionHub(lambda: redis.Redis.from_url(redis_server.url, socket_timeout=2))
    yield hub
    hub.close()


def subscribed(hub: SubscriptionHub, channel: str) -> Listener:
    listener = Listener()
    hub.add(listener, [channel])
    assert hub.wait_subscribed([channel], 5)
    return listener


def test_a_value_read_for_a_subscribed_channel_is_served_again_without_redis(redis_server, hub_on) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("kept:a", b"A")
    subscribed(hub_on, "kept:a")
    client.config_resetstat()
    reader = BatchedReader(client, hub_on)
    assert [reader.mget(["kept:a"]) for _ in range(5)] == [[b"A"]] * 5
    assert calls(client, "MGET") == 1


def test_a_message_published_on_the_channel_makes_the_next_read_go_to_redis(redis_server, hub_on) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("kept:b", b"old")
    listener = subscribed(hub_on, "kept:b")
    client.config_resetstat()
    reader = BatchedReader(client, hub_on)
    assert reader.mget(["kept:b"]) == [b"old"]
    client.set("kept:b", b"new")
    client.publish("kept:b", b"new")
    wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"new"], 5, "the hub to pass the message")
    assert reader.mget(["kept:b"]) == [b"new"]
    assert calls(client, "MGET") == 2


def test_channels_the_hub_does_not_hold_are_read_from_redis_every_time(redis_server, hub_on) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("kept:c", b"C")
    client.config_resetstat()
    reader = BatchedReader(client, hub_on)
    reader.mget(["kept:c"])
    client.set("kept:c", b"C2")  # no message announces it, but nothing was kept either
    assert reader.mget(["kept:c"]) == [b"C2"]
    assert calls(client, "MGET") == 2


def test_a_message_that_passes_while_the_read_is_under_way_keeps_nothing(redis_server, hub_on) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("kept:d", b"D1")
    listener = subscribed(hub_on, "kept:d")
    client.config_resetstat()
    reader = BatchedReader(client, hub_on)
    assert reader._held is not None
    execute = reader._held.execute

    def publishing_during_read(commands):
        replies = execute(commands)
        if calls(client, "MGET") == 1:  # the first read: a message on the channel passes the hub meanwhile
            client.publish("kept:d", b"D2")
            wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"D2"], 5, "the hub to pass the message")
        return replies

    reader._held.execute = publishing_during_read  # type: ignore[method-assign]
    assert reader.mget(["kept:d"]) == [b"D1"]  # what Redis held when it was read
    client.set("kept:d", b"D2")
    assert reader.mget(["kept:d"]) == [b"D2"]  # not the value read before the message
    assert calls(client, "MGET") == 2


def test_what_no_message_announces_shows_within_the_memory_window(redis_server, hub_on, monkeypatch) -> None:
    import ws4redis_uwsgi.bus.batched_reader as batched_reader

    monkeypatch.setattr(batched_reader, "REMEMBER_SECONDS", 0.2)
    client = redis.Redis.from_url(redis_server.url)
    client.set("kept:e", b"E")
    subscribed(hub_on, "kept:e")
    reader = BatchedReader(client, hub_on)
    assert reader.mget(["kept:e"]) == [b"E"]
    client.delete("kept:e")  # as a program that deletes the key without publishing
    wait_for(lambda: reader.mget(["kept:e"]) == [None], 2, "the deleted key to show")


def test_an_absence_is_remembered_longer_than_a_value_until_a_message_passes(redis_server, hub_on, monkeypatch) -> None:
    """What a user's next page reads: nothing stored, nothing published since: no round trip for seconds."""
    import ws4redis_uwsgi.bus.batched_reader as batched_reader

    monkeypatch.setattr(batched_reader, "REMEMBER_SECONDS", 0.05)
    client = redis.Redis.from_url(redis_server.url)
    client.delete("kept:absent")
    client.set("kept:present", b"P")
    listener = subscribed(hub_on, "kept:absent")
    subscribed(hub_on, "kept:present")
    client.config_resetstat()
    reader = BatchedReader(client, hub_on)
    assert reader.mget(["kept:absent", "kept:present"]) == [None, b"P"]
    gevent.sleep(0.1)  # past the value's memory, well within the absence's
    assert reader.mget(["kept:absent"]) == [None]
    assert calls(client, "MGET") == 1
    assert reader.mget(["kept:present"]) == [b"P"]
    assert calls(client, "MGET") == 2
    client.set("kept:absent", b"now")
    client.publish("kept:absent", b"now")  # as every publisher of this package does
    wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"now"], 5, "the hub to pass the message")
    assert reader.mget(["kept:absent"]) == [b"now"]


# -- BatchedPipeline: the history reads of concurrent websockets ------------------------------------------


def test_concurrent_pipelines_send_each_distinct_command_once_and_answer_each_in_its_order(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.delete("bp:stream")
    first = client.xadd("bp:stream", {"m": "one"}).decode()
    client.xadd("bp:stream", {"m": "two"})
    client.set("bp:trimmed", "0-1")
    after_first = ("XRANGE", "bp:stream", f"({first}", "+", "COUNT", 10)
    oldest = ("XRANGE", "bp:stream", "-", "+", "COUNT", 1)
    trimmed = ("GET", "bp:trimmed")
    client.config_resetstat()
    batcher = BatchedPipeline(client)
    jobs = [gevent.spawn(batcher.run, commands) for commands in ([after_first, oldest], [trimmed, after_first], [oldest])]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    one, two, three = (job.value for job in jobs)
    assert [fields for _, fields in one[0]] == [{b"m": b"two"}]
    assert one[1][0][0].decode() == first
    assert two[0] == b"0-1" and two[1] == one[0]
    assert three == [one[1]]
    assert (calls(client, "XRANGE"), calls(client, "GET")) == (2, 1)  # each distinct command once


def test_a_failed_pipeline_raises_in_every_waiting_caller() -> None:
    dead = BatchedPipeline(redis.Redis(port=free_port(), socket_connect_timeout=1))
    jobs = [gevent.spawn(dead.run, [("GET", f"k{i}")]) for i in range(3)]
    gevent.joinall(jobs, timeout=10)
    assert all(isinstance(job.exception, redis.ConnectionError) for job in jobs)


# -- a new channel's stored message, read by the hub with its subscription (RESP3) ----------------------------


@pytest.fixture
def reading_hub(redis_server):
    """A hub that reads new channels' stored messages with their SUBSCRIBE, already connected (HELLO answered).

    No socket timeout: the hub reads the socket itself (with one, redis-py's PubSub reads, and reads no stored message).
    """
    hub = SubscriptionHub(lambda: redis.Redis.from_url(redis_server.url, socket_timeout=None), read_stored=True)
    subscribed(hub, "pre:warm")
    link = next(iter(hub._links.values()))
    wait_for(lambda: gevent.sleep(0.01) or link.connected, 5, "the hub's connection")
    yield hub
    hub.close()


def read_with_subscription(hub: SubscriptionHub, channel: str) -> Listener:
    listener = subscribed(hub, channel)
    link = next(iter(hub._links.values()))
    wait_for(lambda: gevent.sleep(0.01) or channel not in link.reading, 5, "the hub's read of the stored message")
    return listener


def test_a_new_channels_stored_message_comes_with_its_subscription_and_the_handshake_reads_nothing(
    redis_server, reading_hub
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("pre:a", b"A")
    client.delete("pre:none")
    client.config_resetstat()
    read_with_subscription(reading_hub, "pre:a")
    read_with_subscription(reading_hub, "pre:none")
    reader = BatchedReader(client, reading_hub)
    assert reader.mget(["pre:a", "pre:none"]) == [b"A", None]
    assert calls(client, "MGET") == 2  # the hub's, one per SUBSCRIBE; none of the reader's
    assert calls(client, "SUBSCRIBE") == 2


def test_a_message_after_the_subscription_makes_the_read_with_it_stale(redis_server, reading_hub) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("pre:b", b"old")
    listener = read_with_subscription(reading_hub, "pre:b")
    client.set("pre:b", b"new")
    client.publish("pre:b", b"new")
    wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"new"], 5, "the hub to pass the message")
    assert reading_hub.preread("pre:b") is None
    client.config_resetstat()
    assert BatchedReader(client, reading_hub).mget(["pre:b"]) == [b"new"]
    assert calls(client, "MGET") == 1


def test_with_resp3_the_hubs_pings_are_answered_and_messages_still_pass(redis_server) -> None:
    hub = SubscriptionHub(
        lambda: redis.Redis.from_url(redis_server.url, socket_timeout=None), read_stored=True, ping_interval=0.1
    )
    try:
        listener = subscribed(hub, "pre:ping")
        link = next(iter(hub._links.values()))
        wait_for(lambda: gevent.sleep(0.01) or link.connected, 5, "the hub's connection")
        client = redis.Redis.from_url(redis_server.url)
        client.config_resetstat()
        wait_for(lambda: gevent.sleep(0.05) or calls(client, "PING") >= 3, 5, "three PINGs")
        client.publish("pre:ping", b"still here")
        wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"still here"], 5, "the message")
        assert hub.disconnects == 0
    finally:
        hub.close()


class RedisWithoutHello(RedisServer):
    """A Redis that refuses HELLO, as Redis 5 does (redis-py then needs ``protocol=2``)."""

    def command(self, bind: str = "127.0.0.1") -> list[str]:
        return [*super().command(bind), "--rename-command", "HELLO", ""]

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1, protocol=2).ping())
        except redis.RedisError:
            return False


@pytest.mark.parametrize("why", ["redis refuses HELLO", "hiredis before 3.2"])
def test_where_resp3_cannot_be_had_the_subscriptions_work_as_before_and_the_handshake_reads_itself(
    why, tmp_path, monkeypatch
) -> None:
    """A Redis that refuses ``HELLO 3`` (as Redis 5 does), or a hiredis that gives RESP3 pushes as plain lists.

    The hub keeps to RESP2 and asks for nothing more: no MGET of its own, no lost connection.
    """
    from ws4redis_uwsgi.bus import subscription

    if why == "hiredis before 3.2":
        monkeypatch.setattr(subscription, "PUSH_NOTIFICATION", None)
        server = RedisServer(workdir=tmp_path).start()
    else:
        server = RedisWithoutHello(workdir=tmp_path).start()
    hub = SubscriptionHub(lambda: redis.Redis.from_url(server.url, socket_timeout=None, protocol=2), read_stored=True)
    try:
        client = redis.Redis.from_url(server.url, protocol=2)
        client.set("pre:c", b"C")
        client.config_resetstat()
        listener = subscribed(hub, "pre:c")
        client.publish("pre:c", b"live")
        wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"live"], 5, "the message")
        assert hub.disconnects == 0
        assert calls(client, "HELLO") == 0 and calls(client, "MGET") == 0
        assert BatchedReader(client, hub).mget(["pre:c"]) == [b"C"]
        assert calls(client, "MGET") == 1  # the reader's: the hub read nothing
    finally:
        hub.close()
        server.kill()
