"""One worker under many clients, Redis failures, and a ws4redis-style site: real processes."""

from __future__ import annotations

import asyncio
import socket
import time

import psutil
import pytest
import redis
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import SITE_ENV
from tests.integration.helpers import SITE_ORIGIN, client, facility, logged_as_slow_consumer, recv
from tests.servers import TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = pytest.mark.integration


def pubsub_clients(redis_client) -> list[dict]:
    """CLIENT LIST entries of connections that hold a pub/sub subscription."""
    return [c for c in redis_client.client_list() if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]


def clients_of(redis_client, server: UwsgiServer) -> list[dict]:
    """CLIENT LIST entries of the connections ``server``'s workers hold to Redis (matched by their local ports)."""
    redis_port = redis_client.connection_pool.connection_kwargs["port"]
    ports = {
        connection.laddr.port
        for pid in server.worker_pids()
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == redis_port
    }
    return [c for c in redis_client.client_list() if int(c["addr"].rpartition(":")[2]) in ports]


async def _open_many(url: str, count: int, batch: int = 200) -> list:
    sockets: list = []
    for start in range(0, count, batch):
        opened = await asyncio.gather(
            *(
                aconnect(url, origin=SITE_ORIGIN, open_timeout=30 * TIMING, close_timeout=1, ping_interval=None)
                for _ in range(start, min(count, start + batch))
            )
        )
        sockets.extend(opened)
    return sockets


@pytest.mark.timeout(180)
def test_1500_clients_on_one_worker_receive_one_broadcast_over_one_subscription(uwsgi_server, redis_client):
    fac = facility()
    count = 1500

    async def scenario() -> list:
        sockets = await _open_many(f"{uwsgi_server.url}/ws/{fac}?subscribe-broadcast", count)
        try:
            # Every handshake completed after the subscription was confirmed.
            # (Other workers of the test run may hold subscriptions of their own: this worker's count.)
            connections_from_worker = clients_of(redis_client, uwsgi_server)
            subscribers = [c for c in connections_from_worker if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]
            assert len(subscribers) == 1, subscribers
            assert len(connections_from_worker) <= 10  # one subscription and a bounded command pool
            receivers = await asyncio.to_thread(RedisPublisher(facility=fac, broadcast=True).publish_message, "to all 1500", 0)
            assert receivers == 1  # one worker, however many browsers
            return await asyncio.gather(*(asyncio.wait_for(ws.recv(), 30 * TIMING) for ws in sockets))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    redis_client.client_setname("tests")
    received = asyncio.run(scenario())
    assert received == ["to all 1500"] * count


@pytest.mark.timeout(90)
def test_redis_restart_keeps_websockets_open_and_delivery_resumes(private_stack):
    redis_server, server = private_stack
    fac = facility()
    with (
        client(server, f"/ws/{fac}?subscribe-broadcast") as a,
        client(server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast") as b,
    ):
        RedisPublisher(facility=fac, broadcast=True).publish_message("before", expire=0)
        assert recv(a) == "before" and recv(b) == "before"

        redis_server.kill()
        # While Redis is down, publishers fail fast with a clear error instead of hanging.
        with pytest.raises(redis.ConnectionError):
            RedisPublisher(facility=fac, broadcast=True).publish_message("while down", expire=0)
        redis_server.start()  # same port, empty: the hub must subscribe again by itself

        probe = redis.Redis.from_url(redis_server.url)
        channel = f"test:broadcast:{fac}"
        wait_for(lambda: dict(probe.pubsub_numsub(channel)).get(channel.encode()), 30, "re-subscription after restart")
        RedisPublisher(facility=fac, broadcast=True).publish_message("after", expire=0)
        assert recv(a) == "after"
        assert recv(b) == "after"
        b.send("from a client after the restart")
        assert recv(a) == "from a client after the restart"
        assert len(pubsub_clients(probe)) == 1
    assert "Redis subscription lost" in server.log_text()


def test_ws4redis_style_site_works_with_only_imports_changed(site_db, redis_server, tmp_path):
    """A site's own wsgi_websocket.py, written for ws4redis, with ``ws4redis`` renamed."""
    site = tmp_path / "legacy_site"
    site.mkdir()
    (site / "wsgi_websocket.py").write_text(
        "import os\n"
        "import gevent.socket\n"
        "import redis.connection\n"
        "redis.connection.socket = gevent.socket\n"
        "os.environ.update(DJANGO_SETTINGS_MODULE='tests.testsite.settings')\n"
        "from ws4redis_uwsgi.uwsgi_runserver import uWSGIWebsocketServer\n"
        "application = uWSGIWebsocketServer()\n"
    )
    env = {k: v for k, v in SITE_ENV.items() if k != "DJANGO_SETTINGS_MODULE"}
    server = UwsgiServer(
        env, cores=50, log_path=tmp_path / "uwsgi.log", module="wsgi_websocket:application", pythonpath=[str(site)]
    ).start()
    try:
        fac = facility()
        with client(server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast&echo") as ws:
            RedisPublisher(facility=fac, broadcast=True).publish_message("legacy works", expire=0)
            assert recv(ws) == "legacy works"
            ws.send("and back")
            assert recv(ws) == "and back"
    finally:
        server.stop()


def test_client_close_is_answered_with_a_close_frame(uwsgi_server):
    """uWSGI answers a client's close frame itself (with an empty one); the handshake completes."""
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        pass
    assert ws.protocol.close_rcvd is not None  # not an abnormal (1006) end
    assert ws.protocol.close_rcvd_then_sent is False  # the client closed first


@pytest.mark.timeout(90)
def test_full_worker_refuses_with_503_instead_of_hanging(redis_server, site_db, tmp_path):
    server = UwsgiServer(SITE_ENV, cores=20, log_path=tmp_path / "uwsgi.log").start()  # 19 websockets at most
    fac = facility()

    async def scenario() -> None:
        url = f"{server.url}/ws/{fac}?subscribe-broadcast"
        held = await _open_many(url, 19)
        try:
            with pytest.raises(InvalidStatus) as refused:
                await aconnect(url, origin=SITE_ORIGIN, open_timeout=10 * TIMING)
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "5"
            await held.pop().close()
            extra = await aconnect(url, origin=SITE_ORIGIN, open_timeout=10 * TIMING)
            held.append(extra)
            await asyncio.to_thread(RedisPublisher(facility=fac, broadcast=True).publish_message, "room for one more", 0)
            assert await asyncio.wait_for(extra.recv(), 10 * TIMING) == "room for one more"
        finally:
            await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
@pytest.mark.timeout(120)
def test_a_client_that_never_reads_does_not_slow_the_others(redis_server, site_db, tmp_path):
    env = {**SITE_ENV, "WS4REDIS_TEST_MAX_PENDING": "50"}
    server = UwsgiServer(env, cores=100, log_path=tmp_path / "uwsgi.log").start()
    fac = facility()
    url = f"{server.url}/ws/{fac}?subscribe-broadcast"
    count, readers = 300, 20
    payload = "x" * 16_000

    async def scenario() -> tuple[list[float], object]:
        # The stuck client: a tiny receive buffer and it never reads.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck = await aconnect(url, sock=sock, origin=SITE_ORIGIN, max_queue=1, ping_interval=None)
        stuck.transport.pause_reading()
        fast = await _open_many(url, readers)
        latencies: list[float] = []

        async def read_all(ws) -> None:
            for i in range(count):
                message = await asyncio.wait_for(ws.recv(), 30 * TIMING)
                sent, seq, _ = message.split(" ", 2)
                assert int(seq) == i
                latencies.append(time.time() - float(sent))

        publisher = RedisPublisher(facility=fac, broadcast=True)

        def publish() -> None:
            for i in range(count):
                publisher.publish_message(f"{time.time()} {i} {payload}", expire=0)
                time.sleep(0.002)

        await asyncio.gather(asyncio.to_thread(publish), *(read_all(ws) for ws in fast))
        stuck.transport.resume_reading()
        try:
            while True:
                await asyncio.wait_for(stuck.recv(), 30 * TIMING)
        except ConnectionClosed:
            pass
        await asyncio.gather(*(ws.close() for ws in fast))
        return latencies, stuck

    try:
        latencies, stuck = asyncio.run(scenario())
    finally:
        server.stop()
    assert len(latencies) == count * readers  # every reader got every message, in order
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99)] < 0.5 * TIMING, latencies[-10:]
    # The stuck client was cut off: with the documented code when the close frame got through.
    assert stuck.close_code in (CloseCode.SLOW_CONSUMER, 1006)
    assert logged_as_slow_consumer(server.log_text(), 50)


@pytest.mark.timeout(90)
def test_a_burst_of_logged_in_handshakes_uses_a_few_database_connections(uwsgi_server, login):
    """Sessions, users and groups are loaded on a few long-lived greenlets, not one connection per websocket."""
    from ws4redis_uwsgi.server.db_workers import POOL_SIZE

    cookie = login("mary")
    fac = facility()

    async def scenario() -> int:
        url = f"{uwsgi_server.url}/ws/{fac}?subscribe-user&subscribe-group"
        headers = {"Cookie": cookie}
        sockets = await asyncio.gather(
            *(aconnect(url, origin=SITE_ORIGIN, additional_headers=headers, open_timeout=30 * TIMING) for _ in range(200))
        )
        try:
            (worker,) = uwsgi_server.worker_pids()
            database = SITE_ENV["WS4REDIS_TEST_DB"]
            opened = sum(1 for f in psutil.Process(worker).open_files() if f.path == database)
            await asyncio.to_thread(RedisPublisher(facility=fac, users=["mary"]).publish_message, "for mary", 0)
            assert await asyncio.gather(*(asyncio.wait_for(ws.recv(), 10 * TIMING) for ws in sockets)) == ["for mary"] * 200
            return opened
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    assert 1 <= asyncio.run(scenario()) <= POOL_SIZE
