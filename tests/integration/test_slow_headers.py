"""Slow request headers ("slowloris") against a real uWSGI worker.

Under ``--gevent`` every connection holds an async core from accept() until its
request headers are complete, before any ws4redis_uwsgi code runs, so the
worker's 503 for a full worker cannot help: clients that trickle their headers
can take every core, and new handshakes then wait in the listen queue.

uWSGI bounds that phase only with ``socket-timeout``, and per read, not per
request (plugins/gevent/gevent.c waits ``socket_timeout`` before each read of
the header): the worker is configured with 1 s, so a client that sends nothing
for longer is dropped. A client that sends a byte at least once a second keeps
its core until ``buffer-size`` bytes (8192 s at one byte per second); only a
front with a deadline for the whole header (nginx's ``client_header_timeout``)
stops it, as the README says.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility
from tests.servers import TIMING, UwsgiServer, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CORES = 20
#: Seconds between two bytes of a slow client that pauses longer than the worker's socket-timeout (1 s).
PAUSING = 1.5
#: Seconds from its first byte within which the worker must have dropped a pausing client.
DROPPED_WITHIN = 3.0 * TIMING

HTTP_REQUEST = (
    b"GET /ws/slow?subscribe-broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
)


def uwsgi_packet(variables: dict[bytes, bytes]) -> bytes:
    body = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in variables.items())
    return struct.pack("<BHB", 0, len(body), 0) + body


UWSGI_REQUEST = uwsgi_packet(
    {
        b"REQUEST_METHOD": b"GET",
        b"PATH_INFO": b"/ws/slow",
        b"QUERY_STRING": b"subscribe-broadcast",
        b"SERVER_PROTOCOL": b"HTTP/1.1",
        b"HTTP_HOST": b"127.0.0.1",
    }
)


class SlowClients(threading.Thread):
    """``count`` connections that each send ``request`` one byte per ``interval`` seconds; records when they are dropped."""

    def __init__(self, port: int, count: int, request: bytes, interval: float) -> None:
        super().__init__(daemon=True)
        self.request = request
        self.interval = interval
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.started = time.monotonic()
        self.sent = [0] * count
        #: Index of a connection -> seconds from its first byte until the server closed it.
        self.dropped_after: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        live = dict(enumerate(self.sockets))
        next_byte = time.monotonic()
        try:
            while live and not self.done.is_set() and time.monotonic() - self.started < 30:
                if time.monotonic() >= next_byte:
                    for i, sock in list(live.items()):
                        try:
                            sock.send(self.request[self.sent[i] : self.sent[i] + 1])
                            self.sent[i] += 1
                        except OSError:
                            self._dropped(i, live)
                    next_byte += self.interval
                readable, _, _ = select.select(list(live.values()), [], [], max(0.0, next_byte - time.monotonic()))
                for sock in readable:
                    with contextlib.suppress(OSError):
                        sock.recv(4096)  # the end of the connection (or an error page): dropped either way
                    self._dropped(self.sockets.index(sock), live)
        finally:
            for sock in self.sockets:
                sock.close()

    def _dropped(self, i: int, live: dict[int, socket.socket]) -> None:
        self.dropped_after[i] = time.monotonic() - self.started
        del live[i]


def accepted(server: UwsgiServer, port: int) -> int:
    """Connections on ``port`` the worker has accept()ed: each one holds an async core."""
    count = 0
    for pid in server.worker_pids():
        try:
            connections = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            continue
        count += sum(1 for c in connections if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
    return count


@contextlib.contextmanager
def worker_full_of_slow_clients(tmp_path: Path, protocol: str, interval: float) -> Iterator[tuple[UwsgiServer, SlowClients]]:
    """A worker with ``CORES`` cores, each held by a client sending its request headers slowly over ``protocol``."""
    uwsgi_port = free_port()
    extra = ["--socket", f"127.0.0.1:{uwsgi_port}"] if protocol == "socket" else []
    server = UwsgiServer(SITE_ENV, cores=CORES, extra=extra, log_path=tmp_path / "uwsgi.log").start()
    port, request = (uwsgi_port, UWSGI_REQUEST) if protocol == "socket" else (server.port, HTTP_REQUEST)
    slow = SlowClients(port, CORES, request, interval)
    try:
        slow.start()
        wait_for(lambda: accepted(server, port) >= CORES, 5, "the worker holding every slow client")
        yield server, slow
    finally:
        slow.done.set()
        slow.join(5)
        server.stop()


def handshake(server: UwsgiServer) -> str:
    """What a browser's handshake gets: '101', '503' (with Retry-After) or 'hung' (no answer within its open timeout)."""
    try:
        with client(server, f"/ws/{facility()}?subscribe-broadcast"):
            return "101"
    except InvalidStatus as refused:
        assert refused.response.status_code == 503, refused.response
        assert refused.response.headers["Retry-After"]
        return "503"
    except TimeoutError:
        return "hung"


@pytest.mark.parametrize("protocol", ["http-socket", "socket"])
def test_slow_headers_that_pause_are_dropped_and_handshakes_get_through(redis_server, site_db, tmp_path, protocol):
    """Clients silent for longer than socket-timeout lose their cores within it, and a browser gets its answer."""
    with worker_full_of_slow_clients(tmp_path, protocol, PAUSING) as (server, slow):
        started = time.monotonic()
        outcome = handshake(server)
        assert outcome in ("101", "503"), (
            f"handshake {outcome} for {time.monotonic() - started:.1f} s behind {CORES} slow clients"
        )

        slow.join(DROPPED_WITHIN)
        assert len(slow.dropped_after) == CORES, f"{CORES - len(slow.dropped_after)} slow clients still connected"
        slowest = max(slow.dropped_after.values())
        assert slowest < DROPPED_WITHIN, f"a slow client was dropped only after {slowest:.1f} s"
        assert max(slow.sent) < len(HTTP_REQUEST) // 10  # cut off long before its headers could be complete
