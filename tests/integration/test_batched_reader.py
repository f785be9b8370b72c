"""BatchedReader: the stored-message reads of concurrent handshakes share one MGET, against a real Redis."""

from __future__ import annotations

import gevent
import pytest
import redis

from tests.servers import free_port, wait_for
from ws4redis_uwsgi.bus.batched_reader import BatchedPipeline, BatchedReader
from ws4redis_uwsgi.bus.hub import SubscriptionHub

pytestmark = pytest.mark.integration


class CountingRedis(redis.Redis):
    """A real client that records the keys of every MGET it sends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mgets: list[list[str]] = []

    def mget(self, keys, *args):  # type: ignore[override]
        self.mgets.append(list(keys))
        return super().mget(keys, *args)


def test_concurrent_reads_share_one_mget_and_each_gets_its_own_values(redis_server) -> None:
    client = CountingRedis.from_url(redis_server.url)
    client.mset({"batch:a": b"A", "batch:b": b"B"})
    client.delete("batch:missing")
    reader = BatchedReader(client)
    wanted = [["batch:a"], ["batch:b", "batch:a"], ["batch:missing"], ["batch:a", "batch:missing", "batch:b"]]
    jobs = [gevent.spawn(reader.mget, keys) for keys in wanted]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert [job.value for job in jobs] == [[b"A"], [b"B", b"A"], [None], [b"A", None, b"B"]]
    assert client.mgets == [["batch:a", "batch:b", "batch:missing"]]
    # Later reads get a round trip of their own.
    assert reader.mget(["batch:b"]) == [b"B"]
    assert client.mgets[-1] == ["batch:b"]


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
    client = CountingRedis.from_url(redis_server.url)
    client.set("kept:a", b"A")
    subscribed(hub_on, "kept:a")
    reader = BatchedReader(client, hub_on)
    assert [reader.mget(["kept:a"]) for _ in range(5)] == [[b"A"]] * 5
    assert client.mgets == [["kept:a"]]


def test_a_message_published_on_the_channel_makes_the_next_read_go_to_redis(redis_server, hub_on) -> None:
    client = CountingRedis.from_url(redis_server.url)
    client.set("kept:b", b"old")
    listener = subscribed(hub_on, "kept:b")
    reader = BatchedReader(client, hub_on)
    assert reader.mget(["kept:b"]) == [b"old"]
    client.set("kept:b", b"new")
    client.publish("kept:b", b"new")
    wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"new"], 5, "the hub to pass the message")
    assert reader.mget(["kept:b"]) == [b"new"]
    assert len(client.mgets) == 2


def test_channels_the_hub_does_not_hold_are_read_from_redis_every_time(redis_server, hub_on) -> None:
    client = CountingRedis.from_url(redis_server.url)
    client.set("kept:c", b"C")
    reader = BatchedReader(client, hub_on)
    reader.mget(["kept:c"])
    client.set("kept:c", b"C2")  # no message announces it, but nothing was kept either
    assert reader.mget(["kept:c"]) == [b"C2"]
    assert len(client.mgets) == 2


def test_a_message_that_passes_while_the_read_is_under_way_keeps_nothing(redis_server, hub_on) -> None:
    class PublishingDuringRead(CountingRedis):
        def mget(self, keys, *args):  # type: ignore[override]
            values = super().mget(keys, *args)
            if len(self.mgets) == 1:  # the first read: a message on the channel passes the hub meanwhile
                self.publish("kept:d", b"D2")
                wait_for(lambda: gevent.sleep(0.01) or listener.messages == [b"D2"], 5, "the hub to pass the message")
            return values

    client = PublishingDuringRead.from_url(redis_server.url)
    client.set("kept:d", b"D1")
    listener = subscribed(hub_on, "kept:d")
    reader = BatchedReader(client, hub_on)
    assert reader.mget(["kept:d"]) == [b"D1"]  # what Redis held when it was read
    client.set("kept:d", b"D2")
    assert reader.mget(["kept:d"]) == [b"D2"]  # not the value read before the message
    assert len(client.mgets) == 2


def test_what_no_message_announces_shows_within_the_memory_window(redis_server, hub_on, monkeypatch) -> None:
    import ws4redis_uwsgi.bus.batched_reader as batched_reader

    monkeypatch.setattr(batched_reader, "REMEMBER_SECONDS", 0.2)
    client = CountingRedis.from_url(redis_server.url)
    client.set("kept:e", b"E")
    subscribed(hub_on, "kept:e")
    reader = BatchedReader(client, hub_on)
    assert reader.mget(["kept:e"]) == [b"E"]
    client.delete("kept:e")  # as a program that deletes the key without publishing
    wait_for(lambda: reader.mget(["kept:e"]) == [None], 2, "the deleted key to show")


# -- BatchedPipeline: the history reads of concurrent websockets ------------------------------------------


class PipelineCounting(redis.Redis):
    """A real client that records the commands of every pipeline it sends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pipelines: list[list[tuple]] = []

    def pipeline(self, *args, **kwargs):  # type: ignore[override]
        pipe = super().pipeline(*args, **kwargs)
        execute = pipe.execute

        def recording_execute(*a, **k):
            self.pipelines.append([tuple(args) for args, _ in pipe.command_stack])
            return execute(*a, **k)

        pipe.execute = recording_execute
        return pipe


def test_concurrent_pipelines_send_each_distinct_command_once_and_answer_each_in_its_order(redis_server) -> None:
    client = PipelineCounting.from_url(redis_server.url)
    client.delete("bp:stream")
    first = client.xadd("bp:stream", {"m": "one"}).decode()
    client.xadd("bp:stream", {"m": "two"})
    client.set("bp:trimmed", "0-1")
    after_first = ("XRANGE", "bp:stream", f"({first}", "+", "COUNT", 10)
    oldest = ("XRANGE", "bp:stream", "-", "+", "COUNT", 1)
    trimmed = ("GET", "bp:trimmed")
    batcher = BatchedPipeline(client)
    jobs = [gevent.spawn(batcher.run, commands) for commands in ([after_first, oldest], [trimmed, after_first], [oldest])]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    one, two, three = (job.value for job in jobs)
    assert [fields for _, fields in one[0]] == [{b"m": b"two"}]
    assert one[1][0][0].decode() == first
    assert two[0] == b"0-1" and two[1] == one[0]
    assert three == [one[1]]
    assert client.pipelines == [[after_first, oldest, trimmed]]  # one pipeline, each command once


def test_a_failed_pipeline_raises_in_every_waiting_caller() -> None:
    dead = BatchedPipeline(redis.Redis(port=free_port(), socket_connect_timeout=1))
    jobs = [gevent.spawn(dead.run, [("GET", f"k{i}")]) for i in range(3)]
    gevent.joinall(jobs, timeout=10)
    assert all(isinstance(job.exception, redis.ConnectionError) for job in jobs)
