"""The uWSGI adapter: websockets through uWSGI's own websocket API, under gevent.

uWSGI performs the handshake, parses frames and answers pings; this module
only calls ``uwsgi.websocket_handshake``, ``uwsgi.websocket_recv_nb``,
``uwsgi.websocket_send`` / ``websocket_send_binary`` and
``uwsgi.connection_fd``. uWSGI's Python API has no call for a close frame,
so :meth:`uWSGIWebsocket.close` writes one itself.
"""

from __future__ import annotations

import gevent.monkey

try:
    import uwsgi
except ImportError:  # imported outside uWSGI, for documentation or checks
    uwsgi = None

if uwsgi is not None and not gevent.monkey.is_module_patched("socket"):
    # A ws4redis-era wsgi_websocket.py only swapped redis-py's socket module;
    # the hub and Django's database access need the whole library patched,
    # before Django is imported below.
    gevent.monkey.patch_all()

import errno
import os
from typing import Any

import gevent.socket

from .close_codes import CloseCode, close_frame
from .envelope import is_utf8
from .exceptions import HandshakeError, WebSocketError
from .wsgi_server import StartResponse, WebsocketWSGIServer


class uWSGIWebsocket:  # noqa: N801 - the name ws4redis used
    """One websocket of the current uWSGI request."""

    def __init__(self) -> None:
        self._fd: int = uwsgi.connection_fd()
        self.closed = False

    def get_file_descriptor(self) -> int:
        return self._fd

    def receive(self) -> bytes | None:
        """The next message the client sent, or ``None``; also lets uWSGI ping and pong."""
        if self.closed:
            raise WebSocketError("websocket is closed")
        try:
            data = uwsgi.websocket_recv_nb()
        except OSError:
            # Left open on purpose: close() still answers the client's close frame.
            raise WebSocketError("websocket closed by the client") from None
        return bytes(data) if data else None

    def send(self, message: bytes | str, binary: bool | None = None) -> None:
        if self.closed:
            raise WebSocketError("websocket is closed")
        if isinstance(message, str):
            message = message.encode("utf-8")
            binary = bool(binary)
        elif binary is None:
            binary = not is_utf8(message)
        try:
            if binary:
                uwsgi.websocket_send_binary(message)
            else:
                uwsgi.websocket_send(message)
        except OSError:
            raise WebSocketError("websocket closed while sending") from None

    def flush(self) -> None:
        """As in ws4redis: give uWSGI a chance to ping; messages read here would be lost, so none are."""

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame with ``code``; uWSGI closes the socket when the request ends."""
        if self.closed:
            return
        self.closed = True
        frame = close_frame(code, reason)
        try:
            written = os.write(self._fd, frame)
            if written < len(frame):
                gevent.socket.wait_write(self._fd, timeout=1.0)
                os.write(self._fd, frame[written:])
        except BlockingIOError:
            try:
                gevent.socket.wait_write(self._fd, timeout=1.0)
                os.write(self._fd, frame)
            except OSError:
                pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                raise


class uWSGIWebsocketServer(WebsocketWSGIServer):  # noqa: N801 - the name ws4redis used
    """The websocket vassal's WSGI application under uWSGI with ``--gevent``."""

    def max_connections(self) -> int | None:
        """By default a few async cores fewer than the worker has.

        When every core holds a websocket, uWSGI stops accepting and new
        clients wait in the listen queue; keeping cores free lets the worker
        answer them with a 503 instead.
        """
        configured = super().max_connections()
        if configured is not None or uwsgi is None:
            return configured
        cores = int(uwsgi.cores)
        return max(1, cores - max(1, cores // 50))

    def upgrade_websocket(self, environ: dict[str, Any], start_response: StartResponse) -> uWSGIWebsocket:
        if uwsgi is None:
            raise RuntimeError("uWSGIWebsocketServer runs only inside uWSGI")
        try:
            uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", ""))
        except OSError as exc:
            raise HandshakeError(f"uWSGI refused the handshake: {exc}") from None
        return uWSGIWebsocket()
