"""Websockets that leave their uWSGI request after the handshake: memory, pings, and the in-request fallback.

Real uWSGI workers. ``uWSGIWebsocketServer`` detaches a websocket from its
request (ws4redis_uwsgi.server.detached), so an idle websocket holds no async core,
request buffers or greenlet; with ``detach = False`` it is served inside its
request as before.
"""

from __future__ import annotations

import asyncio
import signal
import time

import psutil
import pytest
from websockets.asyncio.client import connect as aconnect

from tests.conftest import SITE_ENV
from tests.integration.helpers import SITE_ORIGIN, client, facility, raw_websocket, recv
from tests.servers import TIMING, UwsgiServer
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = pytest.mark.integration


def server_rss(server: UwsgiServer) -> int:
    """Resident memory of the uWSGI master and its worker, bytes."""
    assert server.proc is not None
    return sum(psutil.Process(pid).memory_info().rss for pid in [server.proc.pid, *server.worker_pids()])


@pytest.mark.timeout(120)
def test_an_idle_websocket_costs_the_worker_less_than_10_kb(redis_server, site_db, tmp_path):
    count = 1000
    server = UwsgiServer(SITE_ENV, cores=count + 100, log_path=tmp_path / "uwsgi.log").start()
    fac = facility()
    url = f"{server.url}/ws/{fac}?subscribe-broadcast"

    async def scenario() -> tuple[int, int]:
        async with aconnect(url, origin=SITE_ORIGIN):  # the first websocket loads what every one needs
            pass
        await asyncio.sleep(0.5)
        before = server_rss(server)
        sockets = []
        try:
            for start in range(0, count, 200):
                sockets += await asyncio.gather(
                    *(aconnect(url, origin=SITE_ORIGIN, open_timeout=30 * TIMING) for _ in range(start, start + 200))
                )
            await asyncio.to_thread(RedisPublisher(facility=fac, broadcast=True).publish_message, "to all", 0)
            assert await asyncio.gather(*(asyncio.wait_for(ws.recv(), 30 * TIMING) for ws in sockets)) == ["to all"] * count
            await asyncio.sleep(0.5)
            return before, server_rss(server)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    try:
        before, after = asyncio.run(scenario())
    finally:
        server.stop()
    per_connection = (after - before) / count
    assert per_connection < 10_000, f"{per_connection:.0f} bytes per idle websocket"


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
@pytest.mark.timeout(90)
def test_a_client_that_answers_no_ping_is_dropped_and_one_that_answers_stays(redis_server, site_db, tmp_path):
    """uWSGI's ping rules (websocket-ping-freq, websocket-pong-tolerance) hold for detached websockets."""
    server = UwsgiServer(
        SITE_ENV,
        cores=50,
        log_path=tmp_path / "uwsgi.log",
        extra=["--websocket-ping-freq", "1", "--websocket-pong-tolerance", "1"],
    ).start()
    fac = facility()
    try:
        silent = raw_websocket(server, f"/ws/{fac}?subscribe-broadcast")
        with client(server, f"/ws/{fac}?subscribe-broadcast") as answering:  # websockets answers pings
            silent.settimeout(20 * TIMING)
            received = b""
            while True:
                data = silent.recv(4096)
                if not data:
                    break
                received += data
            assert received.startswith(b"\x89\x00")  # pinged
            assert b"\x88\x02" + CloseCode.NORMAL_CLOSURE.to_bytes(2, "big") in received  # then closed
            RedisPublisher(facility=fac, broadcast=True).publish_message("still here", expire=0)
            assert recv(answering) == "still here"
        silent.close()
    finally:
        server.stop()
    assert "no pong within" in server.log_text()


IN_REQUEST_MODULE = """
from gevent import monkey

monkey.patch_all()

import django

django.setup(set_prefix=False)

from ws4redis_uwsgi.uwsgi_runserver import uWSGIWebsocketServer


class InRequestServer(uWSGIWebsocketServer):
    detach = False


application = InRequestServer()
"""


@pytest.mark.timeout(90)
def test_detach_false_serves_websockets_inside_their_request(redis_server, site_db, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "in_request.py").write_text(IN_REQUEST_MODULE)
    server = UwsgiServer(
        SITE_ENV, cores=50, log_path=tmp_path / "uwsgi.log", module="in_request:application", pythonpath=[str(site)]
    ).start()
    fac = facility()
    try:
        with client(server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast&echo") as ws:
            RedisPublisher(facility=fac, broadcast=True).publish_message("inside the request", expire=0)
            assert recv(ws) == "inside the request"
            ws.send("and back")
            assert recv(ws) == "and back"
            server.proc.send_signal(signal.SIGHUP)  # a graceful reload waits for the request, which closes with 1012
            deadline = time.monotonic() + 10 * TIMING
            while ws.close_code is None and time.monotonic() < deadline:
                try:
                    ws.recv(timeout=1)
                except Exception:
                    break
            assert ws.close_code == CloseCode.SERVICE_RESTART
    finally:
        server.stop()
