"""Websocket clients for the integration tests."""

from __future__ import annotations

import contextlib
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


def facility() -> str:
    """A facility no other test uses, so persisted messages never leak between tests."""
    return "f" + uuid.uuid4().hex[:10]


def wait_subscribed(redis_client, channel: str, count: int = 1) -> None:
    """Wait until Redis counts ``count`` subscribers (worker hubs) on ``channel``."""
    from tests.servers import wait_for

    wait_for(
        lambda: dict(redis_client.pubsub_numsub(channel)).get(channel.encode(), 0) >= count, 10, f"subscription to {channel}"
    )
