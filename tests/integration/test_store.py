"""What a publish stores and sends, with history on and off, against a real redis-server."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack

import pytest
from django.test import override_settings

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv
from tests.integration.test_live_auth import login, new_user
from tests.servers import UwsgiServer
from ws4redis_uwsgi.publisher import NotReplicatedError, RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HISTORY_OFF = {"WS4REDIS_HISTORY_LENGTH": 0, "WS4REDIS_HISTORY_SECONDS": 0}


class TricklingProxy:
    """A TCP proxy to Redis that forwards what its clients send a kilobyte at a time, a millisecond apart.

    Redis then reads a publish in pieces and serves its other clients in
    between, every time, as it may do with any large publish.
    """

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream))
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece on its own, now
            threading.Thread(target=self._pump, args=(client, server, 1024, 0.001), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 65536, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, size: int, pause: float) -> None:
        try:
            while data := source.recv(size):
                sink.sendall(data)
                time.sleep(pause)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("history", [pytest.param({}, id="history-on"), pytest.param(HISTORY_OFF, id="history-off")])
def test_a_message_anyone_got_live_is_already_the_stored_one(redis_server, redis_client, history):
    """Stored and published at once: a websocket that subscribes, then reads the stored message, never misses one.

    Were a message published first and stored after, a websocket subscribing
    in between would read the one before while this one went out before its
    subscription. Here every publish reaches Redis in pieces (as a large one
    may): earlier versions' pipelined PUBLISH and SET let the reader below
    find the message before every time.
    """
    fac = facility()
    channel = f"test:broadcast:{fac}"
    listener = redis_client.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    proxy = TricklingProxy(redis_server.port)
    stale = []
    with override_settings(WS4REDIS_CONNECTION=f"redis://127.0.0.1:{proxy.port}/0", **history):
        publisher = RedisPublisher(facility=fac, broadcast=True)
        for n in range(5):
            payload = (b"%02d" % n) * 5_000
            sending = threading.Thread(target=publisher.publish_message, args=(payload,), kwargs={"expire": 30})
            sending.start()
            while (message := listener.get_message(timeout=10)) is None or message["type"] != "message":
                assert message is not None, "the message never arrived"
            stored = redis_client.get(channel)  # at once, not through the proxy
            sending.join(10)
            if payload not in stored:  # (with history the stored message is wrapped with its id)
                stale.append(n)
    proxy.close()
    listener.close()
    assert stale == []


def test_without_history_too_a_publish_waits_for_the_replicas_asked_for(redis_server, redis_client):
    """``WS4REDIS_WAIT_REPLICAS`` holds for every publish: a Redis without replicas makes it raise, the message went out."""
    fac = facility()
    listener = redis_client.pubsub()
    listener.subscribe(f"test:broadcast:{fac}")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    with override_settings(WS4REDIS_WAIT_REPLICAS=1, WS4REDIS_WAIT_TIMEOUT=0.05, **HISTORY_OFF):
        with pytest.raises(NotReplicatedError, match="0 of 1 replicas"):
            RedisPublisher(facility=fac, broadcast=True).publish_message("unacknowledged", expire=30)
    assert listener.get_message(timeout=5)["data"] == b"unacknowledged"  # without history: the message as it was sent
    assert redis_client.get(f"test:broadcast:{fac}") == b"unacknowledged"
    listener.close()


def test_without_history_expire_0_publishes_and_leaves_the_stored_message_alone(redis_server, redis_client):
    fac = facility()
    channel = f"test:broadcast:{fac}"
    listener = redis_client.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    with override_settings(**HISTORY_OFF):
        publisher = RedisPublisher(facility=fac, broadcast=True)
        assert publisher.publish_message("kept", expire=30) == 1
        assert publisher.publish_message("live only", expire=0) == 1
    assert [listener.get_message(timeout=5)["data"] for _ in range(2)] == [b"kept", b"live only"]
    assert redis_client.get(channel) == b"kept"
    listener.close()


@pytest.fixture
def worker_without_history(redis_server, site_db, tmp_path):
    server = UwsgiServer({**SITE_ENV, "WS4REDIS_TEST_HISTORY": "off"}, cores=100, log_path=tmp_path / "uwsgi.log").start()
    yield server
    server.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("audience", ["broadcast", "user"])
def test_without_history_websockets_opening_while_messages_go_out_miss_none_and_repeat_none(
    worker_without_history, redis_server, audience
):
    """Each websocket gets the message stored when it opened, or the next one live, then every later one once.

    Every publish reaches Redis in pieces (:class:`TricklingProxy`), so that
    websockets open while one is half sent. ``broadcast``: a channel the
    worker holds subscribed all along (the handshake reads the stored
    message on its own); ``user``: each websocket's own channel, new to the
    worker (read with the channel's subscription).
    """
    fac = facility()
    count, opening = 40, 16  # (count > 2 * opening: the last websocket opens while messages still go out)
    users = [new_user() for _ in range(opening)] if audience == "user" else []
    names = [user.username for user in users]
    padding = "." * 4_000
    proxy = TricklingProxy(redis_server.port)
    sent = threading.Semaphore(0)  # released once per message published

    def publish() -> None:
        with override_settings(WS4REDIS_CONNECTION=f"redis://127.0.0.1:{proxy.port}/0", **HISTORY_OFF):
            publisher = RedisPublisher(facility=fac, broadcast=not names, users=names)
            for n in range(count):
                publisher.publish_message(f"{n:03d}{padding}", expire=60)
                sent.release()

    sending = threading.Thread(target=publish)
    sending.start()
    received: list[list[int]] = []
    with ExitStack() as stack:
        sockets = []
        for i in range(opening):  # one every two messages, while the next one goes out
            assert all(sent.acquire(timeout=10) for _ in range(2 if i else 1)), "the publisher stopped"
            query, cookie = ("subscribe-user", login(users[i])[0]) if names else ("subscribe-broadcast", None)
            ws = stack.enter_context(client(worker_without_history, f"/ws/{fac}?{query}", cookie))
            received.append([int(str(recv(ws))[:3])])  # what was stored when it opened, or the next one
            sockets.append(ws)
        sending.join(60)
        for ws, numbers in zip(sockets, received, strict=True):
            while numbers[-1] != count - 1:
                numbers.append(int(str(recv(ws))[:3]))
    proxy.close()
    assert [numbers for numbers in received if numbers != list(range(numbers[0], count))] == []
