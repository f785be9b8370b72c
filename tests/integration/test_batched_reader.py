"""BatchedReader: the stored-message reads of concurrent handshakes share one MGET, against a real Redis."""

from __future__ import annotations

import gevent
import pytest
import redis

from tests.servers import free_port
from ws4redis_uwsgi.bus.batched_reader import BatchedReader

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
    reader._read = lambda: gevent.sleep(10)  # type: ignore[method-assign]  # as if stuck or killed
    with pytest.raises(redis.TimeoutError):
        reader.mget(["k"])
