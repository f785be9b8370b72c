"""Websocket clients for the integration tests."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

from websockets.sync.client import ClientConnection, connect

from tests.servers import TIMING

RECV_TIMEOUT = 5 * TIMING


#: What a browser on the test site sends; ALLOWED_HOSTS has 127.0.0.1.
SITE_ORIGIN = "http://127.0.0.1"


@contextlib.contextmanager
def client(server, path: str, cookie: str | None = None, origin: str | None = SITE_ORIGIN) -> Iterator[ClientConnection]:
    """A connected websocket to ``server`` at ``path`` (e.g. '/ws/chat?subscribe-broadcast'), as a browser on the site."""
    headers = {"Cookie": cookie} if cookie else {}
    with connect(
        server.url + path,
        additional_headers=headers,
        origin=origin,
        open_timeout=5 * TIMING,
        close_timeout=2 * TIMING,
    ) as ws:
        yield ws


def recv(ws: ClientConnection) -> str | bytes:
    return ws.recv(timeout=RECV_TIMEOUT)


def split(frame: str) -> tuple[str, str]:
    """A resuming client's frame as (id, payload)."""
    header, _, payload = frame.partition("\n")
    return header, payload


def facility() -> str:
    """A facility no other test uses, so persisted messages never leak between tests."""
    return "f" + uuid.uuid4().hex[:10]


def wait_subscribed(redis_client, channel: str, count: int = 1) -> None:
    """Wait until Redis counts ``count`` subscribers (worker hubs) on ``channel``."""
    from tests.servers import wait_for

    wait_for(
        lambda: dict(redis_client.pubsub_numsub(channel)).get(channel.encode(), 0) >= count, 10, f"subscription to {channel}"
    )


def raw_websocket(server, path: str, rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    """A websocket handshake by hand, for clients that misbehave (answer no ping, flood, never read).

    ``rcvbuf`` sets a small receive buffer before connecting, as a client that reads slowly has.
    """
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout * TIMING)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {SITE_ORIGIN}\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        data = sock.recv(4096)
        if not data:
            break
        response += data
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def close_code_of(sock: socket.socket, timeout: float = 5.0) -> int | None:
    """Read what the server sends until its close frame; the close code, or None if the connection ended without one."""
    close = close_of(sock, timeout)
    return None if close is None else close[0]


def close_of(sock: socket.socket, timeout: float = 5.0) -> tuple[int, str] | None:
    """Read what the server sends until its close frame; its code and reason, or None if the connection ended without one."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection

    connection = Connection(ConnectionType.CLIENT)
    sock.settimeout(timeout * TIMING)
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        connection.receive_data(data or None)
        for event in connection.events():
            if isinstance(event, CloseConnection):
                return int(event.code), event.reason or ""
        if not data:
            return None


def logged_as_slow_consumer(log: str, max_pending: int) -> bool:
    """Whether the server's log says it cut off a client that fell ``max_pending`` messages behind.

    With a close frame (4000) when the client's turn was not waiting on a write to it;
    reset at once when it was (the close frame could not reach it either).
    """
    return (
        f"closing a websocket that fell {max_pending} messages behind" in log
        or "reset a websocket that fell behind (the client fell too far behind while a frame to it waited)" in log
    )


def left_in_outbox(facility: str, message: bytes) -> object:
    """A broadcast row of the durable outbox as a publisher killed between its commit and its publish leaves it (a minute old)."""
    from datetime import timedelta

    from django.utils import timezone

    from ws4redis_uwsgi.core import envelope
    from ws4redis_uwsgi.models import OutboxMessage

    return OutboxMessage.objects.create(
        uid=envelope.new_durable_uid(),
        created=timezone.now() - timedelta(minutes=1),
        facility=facility,
        audiences={"broadcast": True},
        message=message,
        expire=0,
    )
