"""The HTTP side of the development server: gevent's WSGI server in place of wsgiref.

ws4redis_uwsgi's ``runserver`` command hands :class:`GeventWSGIServer` to
Django's own ``runserver`` machinery as its ``server_cls``; everything else
(system checks, the banner, autoreload, error messages) stays Django's. Each
connection is served in a greenlet by :class:`RequestHandler`, which puts the
client socket into the WSGI environ so that
:mod:`ws4redis_uwsgi.server.development` can speak the websocket protocol on it
after the upgrade. Importing this module has no side effects; serving needs
a gevent-patched process.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from gevent import pywsgi
from gevent.event import Event

logger = logging.getLogger("django.server")

#: Environ keys under which :class:`RequestHandler` passes the client socket and its
#: buffered reader to the application.
SOCKET_KEY = "ws4redis_uwsgi.socket"
RFILE_KEY = "ws4redis_uwsgi.rfile"


class RequestHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """gevent's request handler, plus the client socket in the environ and Django's request log."""

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ[SOCKET_KEY] = self.socket
        environ[RFILE_KEY] = self.rfile
        return environ

    def handle_one_response(self) -> None:
        super().handle_one_response()
        if self.code == 101:
            # The connection carried a websocket, which is over: no HTTP request follows on it.
            self.close_connection = True

    def log_request(self) -> None:
        """One line per response on the ``django.server`` logger, as Django's runserver writes it."""
        raw = self.status or "000"
        status = (raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)).split(" ", 1)[0]
        extra: dict[str, Any] = {}
        level = logging.INFO
        if status.isdigit() and len(status) == 3:
            code = extra["status_code"] = int(status)
            level = logging.ERROR if code >= 500 else logging.WARNING if code >= 400 else logging.INFO
        logger.log(level, '"%s" %s %s', self.requestline, status, self.response_length or "-", extra=extra)


class GeventWSGIServer:
    """What ``django.core.servers.basehttp.run()`` expects of its ``server_cls``, on ``gevent.pywsgi``.

    Binds in the constructor, as Django's server does, so that a busy port
    fails with Django's own message. ``--nothreading`` changes nothing: every
    connection gets a greenlet.
    """

    #: Set by Django's run() when it mixes in ThreadingMixIn; greenlets need nothing.
    daemon_threads = True
    backlog = 128

    def __init__(self, server_address: tuple[str, int], handler_class: Any = None, ipv6: bool = False) -> None:
        # Called in a gevent-patched process: socket.socket is gevent's.
        listener = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(server_address)
            listener.listen(self.backlog)
        except OSError:
            listener.close()
            raise
        self.server_port: int = listener.getsockname()[1]
        self.server = pywsgi.WSGIServer(listener, handler_class=RequestHandler, log=None)

    def set_app(self, application: Any) -> None:
        self.server.application = application

    def serve_forever(self) -> None:
        """Serve until the process stops; then stop accepting and run :data:`on_stop`.

        Unlike ``pywsgi.WSGIServer.serve_forever()``, which kills the running
        handlers when it is interrupted, this leaves websockets to the hooks,
        which close them properly.
        """
        _serving.append(self)
        self.server.start()
        try:
            Event().wait()
        finally:
            stop_serving()

    def close(self) -> None:
        """Stop accepting connections; those open go on."""
        self.server.close()


_serving: list[GeventWSGIServer] = []

#: Called once when the process stops serving (Ctrl-C, the autoreloader's exit), after
#: the listening sockets closed, so that clients reconnecting reach the next process.
on_stop: list[Callable[[], None]] = []


def stop_serving() -> None:
    """Close the listening sockets of this process, then run the :data:`on_stop` hooks; safe to call again."""
    while _serving:
        _serving.pop().close()
    while on_stop:
        on_stop.pop()()
