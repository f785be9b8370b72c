"""The development server: pages and websockets from one ``manage.py runserver`` port.

As ``ws4redis.django_runserver.application`` did,
:data:`ws4redis_uwsgi.django_runserver.application` (a :class:`DevelopmentApplication`)
sends requests below ``WEBSOCKET_URL`` to a websocket server and everything
else to Django::

    # settings.py, for development only
    WSGI_APPLICATION = "ws4redis_uwsgi.django_runserver.application"
    INSTALLED_APPS = ["ws4redis_uwsgi", ..., "django.contrib.staticfiles", ...]

Not for production: there the websocket loop runs under uWSGI
(:mod:`ws4redis_uwsgi.wsgi_websocket`).

Design
------

The websocket loop (:class:`~ws4redis_uwsgi.server.loop.WebsocketWSGIServer`)
and the per-process Redis hub are gevent code: one greenlet per websocket,
one subscription greenlet, waits on file descriptors through gevent's loop.
Django's own ``runserver`` is wsgiref with one OS thread per request and no
gevent, so a websocket there would run outside any gevent loop that the hub
could wake. Instead of bridging threads and greenlets, the development server
is made what production is, a gevent-patched process:

* ``ws4redis_uwsgi`` ships a ``runserver`` management command (a subclass of
  Django's, or of ``django.contrib.staticfiles``' when that is installed, as
  daphne and django-channels do; list ``ws4redis_uwsgi`` above those apps in
  ``INSTALLED_APPS``). It serves the same WSGI application with
  ``gevent.pywsgi`` instead of wsgiref
  (:class:`~ws4redis_uwsgi.server.devserver.GeventWSGIServer`), so every request,
  page or websocket, is a greenlet.
* gevent must patch the standard library before Django is imported, as
  :mod:`ws4redis_uwsgi.wsgi_websocket` does under uWSGI: patched later, the
  ``threading.local`` holding Django's database connections, made when
  ``manage.py`` imported Django, would stay per OS thread and be shared by
  every concurrent request. ``manage.py`` imports Django before any command
  runs, so the command starts the process that serves through
  :mod:`ws4redis_uwsgi.gevent_launcher`, which patches first and then runs
  ``manage.py`` again: with autoreload, the reloading parent (not patched,
  it only restarts) starts every serving child that way and the child runs
  Django's ``autoreload.run_with_reloader`` as usual; with ``--noreload``
  the process re-executes itself once through the launcher.
* The websocket adapter speaks RFC 6455 on the raw client socket, which the
  gevent request handler puts into the environ. The handshake response goes
  out through ``start_response`` (101, with ``Sec-WebSocket-Accept`` from
  wsproto); frames are read and written by wsproto's post-handshake
  ``wsproto.connection.Connection``. No framing is written here.
* When the serving process exits (a reload, Ctrl-C) open websockets are
  closed with 1012 (service restart), so clients reconnect to the new
  process.

Under any other server (Django's plain runserver, gunicorn) pages still
work, and websocket requests are refused with HTTP 500 and a log line
saying how to fix it; the system check ``ws4redis_uwsgi.W001`` warns when
``runserver`` is not this package's.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.socket
from django.core.wsgi import get_wsgi_application
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

from .. import settings
from ..core.close_codes import CloseCode, violation
from ..core.envelope import outgoing
from ..core.exceptions import HandshakeError, WebSocketError
from ..core.frames import MessageSizeLimit
from ..core.handshake import chosen_protocol, offered_protocols
from ..core.inbound import InboundPolicy, Verdict
from ..core.keepalive import KeepAlive, keep_alive
from .adapter import StartResponse, Waiter, Websocket, close_for_rule
from .devserver import RFILE_KEY, SOCKET_KEY
from .limits import CLOSE_LINGER, CLOSE_LINGER_BYTES, CLOSE_TIMEOUT, READ_SIZE, SEND_TIMEOUT, websocket_limits
from .loop import WebsocketWSGIServer
from .sockets import limit_send_buffer

logger = logging.getLogger("ws4redis_uwsgi")


class WsprotoWebsocket:
    """One websocket on a client socket, framed by wsproto.

    The interface of :class:`~ws4redis_uwsgi.server.uwsgi.uWSGIWebsocket`:
    :meth:`receive` never blocks, reads the socket once at most, and answers
    pings (counted against the client's rate, :attr:`inbound`, as on uWSGI);
    :meth:`send` picks text or binary frames the same way. The limits, the
    keep-alive rule and the close timeouts are those of websockets under
    uWSGI (:mod:`~ws4redis_uwsgi.server.limits`, uWSGI's defaults for its
    options): a message whose frame headers announce more than
    ``WS4REDIS_MAX_MESSAGE_SIZE`` closes the websocket with 1009 before it is
    held in memory, a ping goes out every 30 s and one unanswered for 3 s
    ends the websocket. The kernel's send buffer is capped alike
    (``WS4REDIS_SEND_BUFFER``), so a client that stops reading counts as slow
    here too. Only the writing differs: the development server writes
    through gevent's socket object (it has no direct writes from the hub,
    which only the uWSGI worker's fast path needs).
    """

    def __init__(self, sock: socket.socket, received: bytes = b"") -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self.limits = websocket_limits()
        self._connection = Connection(ConnectionType.SERVER, extensions=[MessageSizeLimit(self.limits.max_message_size)])
        #: The client's limits, set by the loop; pings count against its rate.
        self.inbound: InboundPolicy | None = None
        self._messages: deque[bytes] = deque()
        self._parts: list[bytes] = []
        self._size = 0
        self._peer_closed = False
        # As uWSGI: the first ping ping_freq after the handshake.
        self._last_ping = time.monotonic()
        self._awaiting_pong = False
        self.closed = False
        sock.settimeout(SEND_TIMEOUT)
        limit_send_buffer(self._fd, self.limits.send_buffer)
        if received:
            self._feed(received)

    def get_file_descriptor(self) -> int:
        return self._fd

    def direct_writer(self, wake: Any) -> None:
        """None: frames go through wsproto and gevent's socket, never straight from the hub."""
        return None

    def dispose(self) -> None:
        """Nothing: gevent's request handler closes the socket when the request ends."""

    @property
    def pending(self) -> bool:
        """Whether messages already read from the socket wait for :meth:`receive`."""
        return bool(self._messages)

    def receive(self) -> bytes | None:
        """The next message the client sent (text as UTF-8 bytes), or ``None`` when none is complete.

        :raises WebSocketError: when the client closed the websocket or went away.
        """
        if self.closed:
            raise WebSocketError("websocket is closed")
        if not self._messages and not self._peer_closed:
            data = self._read()  # once: a client that sends without pause gets another turn later
            if data is not None:
                self._feed(data)
        if self._messages:
            return self._messages.popleft()
        if self._peer_closed:
            raise WebSocketError("websocket closed by the client")
        if not self.closed:
            self._keep_alive()
        return None

    def send(self, message: bytes | str, binary: bool | None = None) -> None:
        if self.closed:
            raise WebSocketError("websocket is closed")
        payload, binary = outgoing(message, binary)  # the one rule for text and binary frames
        event: Message[Any] = BytesMessage(data=payload) if binary else TextMessage(data=payload.decode("utf-8"))
        try:
            data = self._connection.send(event)
        except LocalProtocolError:
            raise WebSocketError("websocket is closing") from None
        self._write(data)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame with ``code``, then wait briefly for the client's.

        The server's side is shut down after the close frame; reading until
        the client's close frame or the end of the connection means no unread
        byte makes the kernel reset the connection, which could cost the
        client frames it has not read yet.
        """
        if self.closed:
            return
        self.closed = True
        if self._connection.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return
        try:
            self._sock.settimeout(CLOSE_TIMEOUT)
            self._sock.sendall(self._connection.send(CloseConnection(code=int(code), reason=reason)))
            if self._connection.state is ConnectionState.LOCAL_CLOSING:
                self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        self._await_close(CLOSE_LINGER)

    # -- inside ----------------------------------------------------------------------

    def _read(self) -> bytes | None:
        """What the socket holds now (``b''`` when the client is gone), ``None`` when nothing waits."""
        try:
            return os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError:
            raise WebSocketError("websocket closed while sending") from None

    def _feed(self, data: bytes) -> None:
        """Hand received bytes (``b''``: the connection ended) to wsproto and act on its events."""
        self._connection.receive_data(data or None)
        for event in self._connection.events():
            if isinstance(event, Message):
                chunk = event.data.encode("utf-8") if isinstance(event, TextMessage) else bytes(event.data)
                self._size += len(chunk)
                if self._size > self.limits.max_message_size:
                    close_for_rule(self, *Verdict.TOO_BIG.value)
                    return
                self._parts.append(chunk)
                if event.message_finished:
                    self._messages.append(b"".join(self._parts))
                    self._parts, self._size = [], 0
            elif isinstance(event, (Ping, Pong)):
                if self.inbound is not None and not self.inbound.allow_frame(time.monotonic()):
                    close_for_rule(self, *Verdict.TOO_FAST.value)
                    return
                if isinstance(event, Ping):
                    self._write(self._connection.send(event.response()))
                else:
                    self._awaiting_pong = False
            elif isinstance(event, CloseConnection):
                if self._connection.state is ConnectionState.REMOTE_CLOSING:
                    # The client closes: answer with its code, as uWSGI does.
                    self._write(self._connection.send(event.response()))
                    self._peer_closed = True
                elif self._connection.state is ConnectionState.OPEN:
                    # wsproto found a broken frame (bad opcode, invalid UTF-8, ...): give up on the stream.
                    close_for_rule(self, *violation(event.code))
                else:
                    self._peer_closed = True  # the connection ended
                return

    def _keep_alive(self) -> None:
        now = time.monotonic()
        action = keep_alive(now, self._last_ping, self._awaiting_pong, self.limits.ping_freq, self.limits.pong_tolerance)
        if action is KeepAlive.GONE:
            raise WebSocketError("no answer to ping")
        if action is KeepAlive.PING:
            self._last_ping, self._awaiting_pong = now, True
            self._write(self._connection.send(Ping()))

    def _await_close(self, timeout: float) -> None:
        """Read until the client's close frame or the end of the connection, at most ``timeout`` seconds.

        What the client sent after our close frame is dropped; after a
        protocol error wsproto parses nothing more, and this reads until the
        client, having our close frame and end of stream, closes.
        """
        deadline = time.monotonic() + timeout
        discarded = 0
        while True:
            for _ in self._connection.events():
                pass
            remaining = deadline - time.monotonic()
            if self._connection.state is not ConnectionState.LOCAL_CLOSING or remaining <= 0:
                return
            data = self._read()
            if data is None:
                try:
                    gevent.socket.wait_read(self._fd, timeout=remaining)
                except gevent.socket.timeout:
                    return
            elif not data:
                return
            else:
                discarded += len(data)
                if discarded > CLOSE_LINGER_BYTES:
                    return  # a client that floods after the close frame is not waited for
                self._connection.receive_data(data)
                gevent.sleep(0)  # the other websockets first


class NoSocketError(HandshakeError):
    """The server running this application does not hand over its client socket."""

    status = "500 Internal Server Error"


class WsprotoWebsocketServer(WebsocketWSGIServer):
    """The websocket loop on the development server: wsproto over the socket gevent's handler hands over."""

    def assure_protocol_requirements(self, environ: dict[str, Any]) -> None:
        super().assure_protocol_requirements(environ)
        if SOCKET_KEY not in environ:
            logger.error(
                "websockets need ws4redis_uwsgi's runserver command: list 'ws4redis_uwsgi' above "
                "'django.contrib.staticfiles' (and other apps with a runserver command) in INSTALLED_APPS"
            )
            raise NoSocketError("this server cannot serve websockets")

    def make_waiter(self, websocket: Websocket) -> Waiter:
        waiter = super().make_waiter(websocket)
        if getattr(websocket, "pending", False):
            waiter.wake()  # frames that came with the request: the socket will not signal them again
        return waiter

    def upgrade_websocket(self, environ: dict[str, Any], start_response: StartResponse) -> Websocket:
        key = environ["HTTP_SEC_WEBSOCKET_KEY"].strip().encode("ascii")
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key).decode("ascii")),
        ]
        protocol = chosen_protocol(offered_protocols(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")))
        if protocol is not None:
            headers.append(("Sec-WebSocket-Protocol", protocol))
        write = start_response("101 Switching Protocols", headers)
        write(b"")  # sends the status line and headers now
        sock = environ[SOCKET_KEY]
        return WsprotoWebsocket(sock, received=read_buffered(sock, environ[RFILE_KEY]))


def read_buffered(sock: Any, rfile: Any) -> bytes:
    """Bytes the HTTP parser read past the request, which belong to the websocket.

    A client must wait for the 101 before it sends frames, so this is
    normally empty; reading it without blocking keeps early frames anyway.
    """
    sock.settimeout(0.0)
    try:
        return bytes(rfile.read1(65536) or b"")
    except OSError:
        return b""


class DevelopmentApplication:
    """The WSGI application of the development server: websockets below ``WEBSOCKET_URL``, Django for the rest."""

    def __init__(self) -> None:
        self.django_application = get_wsgi_application()
        self.websocket_server = WsprotoWebsocketServer()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Routing needs the prefix only: the websocket server reads and checks the facility
        # (facility_from_path) and refuses a bad one with its reason, which Django's 404 would not give.
        if environ.get("PATH_INFO", "").startswith(settings.get("WEBSOCKET_URL")):
            return self.websocket_server(environ, start_response)
        return self.django_application(environ, start_response)  # type: ignore[no-any-return]
