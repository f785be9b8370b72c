"""The floor of the fan-out goal: a bare Python hub in the same uWSGI + gevent worker as ws4redis_uwsgi.

Issue 14 asks for fan-out "below the bare Python hub": a hub that writes one
pre-built frame to every socket and does nothing else. This is that hub, run
by ``bench/peers.py`` as the peer ``bare-hub`` in scenario (a) only: each
websocket's handshake is uWSGI's own, its descriptor goes into a set, and one
greenlet reads Redis's pub/sub and writes each message's frame, built once,
to every descriptor with ``os.write``. No Django, nothing of ws4redis_uwsgi
but its frame builder (``core.frames.server_frame``), no origin or audience
checks, no history, no positions, no slow-consumer handling (a socket that
cannot take a frame at once loses it): what is left is the kernel's part of
a delivery and the least Python around it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.socket
import redis
import redis.connection
import uwsgi

from ws4redis_uwsgi.core.frames import server_frame

redis.connection.socket = gevent.socket  # as django-websocket-redis's wsgi_websocket.py does
CHANNEL = "broadcast:bench"  # systems.REDIS_CHANNEL
#: The websockets' descriptors.
SOCKETS: set[int] = set()
_hub: list[gevent.Greenlet] = []


def hub() -> None:
    client = redis.Redis(port=int(os.environ["BENCH_REDIS_PORT"]))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    for message in pubsub.listen():
        data = server_frame(message["data"])
        for fd in tuple(SOCKETS):
            try:
                os.write(fd, data)
            except OSError:
                pass  # full or gone: lost (the bare hub keeps nothing)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if not _hub:  # the first websocket of the worker starts the hub (not the master, before the fork)
        _hub.append(gevent.spawn(hub))
    uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", ""))
    fd = uwsgi.connection_fd()
    SOCKETS.add(fd)
    try:
        while True:
            gevent.socket.wait_read(fd, timeout=60)
            uwsgi.websocket_recv_nb()  # answers pings, raises once the client closed
    except (OSError, gevent.socket.timeout):
        pass
    finally:
        SOCKETS.discard(fd)
    return []
