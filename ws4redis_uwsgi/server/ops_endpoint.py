"""Each worker's metrics and health, on a loopback port of its own: never on the port browsers reach.

With ``WS4REDIS_METRICS_PORT = 9300``, uWSGI worker 1 answers on
``127.0.0.1:9300``, worker 2 on ``9301``, and so on
(``WS4REDIS_METRICS_HOST`` changes the address; give each vassal its own
range). Two paths:

``/metrics``
    the worker's figures in Prometheus' text format
    (:mod:`ws4redis_uwsgi.server.metrics`);
``/health``
    ``200 ok`` while the worker holds its Redis subscription (every
    worker subscribes the live-authorization channel from its start), ``503``
    while it has none or one of its shards is away: a load balancer stops
    sending it new websockets meanwhile.

A separate port rather than a path of the websocket port: behind a local
nginx every request comes from 127.0.0.1, so "loopback only" on the public
port would let the internet in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import process, settings
from ..bus.resources import get_hub
from .authority import get_authority
from .metrics import get_metrics, subscribed, worker_id

logger = logging.getLogger("ws4redis_uwsgi")


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI application of the endpoint."""
    path = environ.get("PATH_INFO", "")
    if path == "/metrics":
        body = generate_latest(get_metrics().registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/health":
        healthy = subscribed(get_hub())
        body = b"ok\n" if healthy else b"no Redis subscription\n"
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


def address() -> tuple[str, int] | None:
    """Where this worker's endpoint listens, or None when ``WS4REDIS_METRICS_PORT`` is not set."""
    base = settings.get("WS4REDIS_METRICS_PORT")
    if base is None:
        return None
    return settings.get("WS4REDIS_METRICS_HOST"), int(base) + max(worker_id(), 1) - 1


def start() -> WSGIServer | None:
    """Start this worker's endpoint (once per process); subscribe the control channel so health means something."""
    get_authority().listen()
    where = address()
    if where is None:
        return None
    return process.resource("ops endpoint", lambda: _serve(where))


def _serve(where: tuple[str, int]) -> WSGIServer | None:
    server = WSGIServer(where, application, log=None, error_log=logger)
    try:
        server.start()
    except OSError as exc:
        logger.error("metrics and health not served on %s:%d: %s", where[0], where[1], exc)
        return None
    logger.info("metrics and health on http://%s:%d/ (worker %d)", where[0], where[1], worker_id())
    return server
