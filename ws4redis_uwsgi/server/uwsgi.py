"""The uWSGI adapter: websockets under uWSGI with gevent.

uWSGI performs the handshake (``uwsgi.websocket_handshake``). After that a
websocket normally leaves its uWSGI request (:mod:`ws4redis_uwsgi.server.detached`):
it keeps a duplicate of the client socket, is framed and pinged by this
package with uWSGI's rules and options, and is served from event-loop
callbacks, so an idle websocket holds no async core, request buffers or
greenlet. On sockets whose state uWSGI keeps (TLS, HTTP keep-alive) or with
:attr:`uWSGIWebsocketServer.detach` False, it stays inside its request and
goes through uWSGI's websocket API (:class:`uWSGIWebsocket`:
``uwsgi.websocket_recv_nb``, ``uwsgi.websocket_send`` /
``websocket_send_binary``, ``uwsgi.connection_fd``); uWSGI's Python API has
no call for a close frame, so :meth:`uWSGIWebsocket.close` writes one itself.
"""

from __future__ import annotations

try:
    import uwsgi
except ImportError:  # imported outside uWSGI, for documentation or checks
    uwsgi = None

import errno
import functools
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from .. import process, settings
from ..core.envelope import outgoing
from ..core.exceptions import HandshakeError, ServerBusyError, WebSocketError
from ..core.handshake import chosen_protocol, offered_protocols
from ..core.text import loggable
from . import limits, ops_endpoint
from .adapter import StartResponse, Websocket
from .collector import tune_collector
from .detached import DetachedSession, DetachedWebsocket, KeepAliveWheel
from .limits import CLOSE_LINGER, CLOSE_TIMEOUT, KEEPALIVE_BATCH, KEEPALIVE_ROUND, WebsocketLimits, websocket_limits
from .loop import WebsocketWSGIServer
from .outbox_drain import start_drain
from .sockets import RawSocket, forget_in_event_loop

if TYPE_CHECKING:
    from ..bus.subscriber import RedisSubscriber

logger = logging.getLogger("ws4redis_uwsgi")

#: uWSGI options whose sockets keep state a detached websocket would lose: TLS
#: (the socket carries ciphertext) and HTTP keep-alive (uWSGI reads the next
#: request from the socket after the response).
KEEPS_THE_SOCKET = ("http11-socket", "https-socket", "ssl-socket", "suwsgi-socket")


class uWSGIWebsocket(RawSocket):  # noqa: N801 - the name ws4redis used
    """One websocket that stays in its uWSGI request, framed by uWSGI.

    uWSGI reads it, answers pings and writes through ``uwsgi.websocket_*``
    from the request's greenlet; the socket layer (:class:`RawSocket`) lets
    the hub write frames it built once straight to the socket, and closes.
    Behind uWSGI's own TLS the socket carries ciphertext: no direct writes
    there (``direct=False``).
    """

    __slots__ = ("direct",)

    def __init__(self, direct: bool = True, send_buffer: int | None = None) -> None:
        super().__init__(uwsgi.connection_fd(), send_buffer)
        #: Whether raw writes to the socket are safe (not for TLS sockets uWSGI encrypts).
        self.direct = direct

    def direct_writer(self, wake: Callable[[], None]) -> RawSocket | None:
        return super().direct_writer(wake) if self.direct else None

    def receive(self) -> bytes | None:
        """The next message the client sent, or ``None``; also lets uWSGI ping and pong."""
        if self.closed:
            raise WebSocketError("websocket is closed")
        self._finish_pending()
        self._busy = True
        try:
            data = uwsgi.websocket_recv_nb()
        except OSError:
            # Left open on purpose: close() still answers the client's close frame.
            raise WebSocketError("websocket closed by the client") from None
        finally:
            self._busy = False
        return bytes(data) if data else None

    def send(self, message: bytes | str, binary: bool | None = None) -> None:
        if self.closed:
            raise WebSocketError("websocket is closed")
        message, binary = outgoing(message, binary)
        self._finish_pending()
        self._busy = True
        try:
            if binary:
                uwsgi.websocket_send_binary(message)
            else:
                uwsgi.websocket_send(message)
        except OSError:
            raise self.write_failed() from None
        finally:
            self._busy = False


#: Descriptors a worker needs besides its clients' sockets: Redis and database
#: connections, logs, the listening socket, the event loop's.
FD_RESERVE = 64


def check_descriptors(cores: int, max_connections: int | None = None) -> None:
    """Warn when uWSGI's ``max-fd`` cannot serve ``cores`` async cores and the websockets the worker holds.

    Each websocket holds a descriptor, and a handshake in progress two (the
    request's socket and the duplicate the websocket keeps). A worker holds
    ``WS4REDIS_MAX_CONNECTIONS`` websockets (``max_connections``), or about as
    many as it has cores when that is not set. Past the limit a handshake is
    refused with 503 instead of being dropped, but the operator should size
    ``max-fd`` so that it does not happen.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    websockets = max_connections if max_connections is not None else cores
    needed = websockets + cores + FD_RESERVE
    if soft < needed:
        logger.warning(
            "max-fd is %d, but %d async cores and %d websockets can need %d descriptors: handshakes past it are "
            "refused with 503; raise uWSGI's max-fd (and the hard limit, LimitNOFILE= in systemd)",
            soft,
            cores,
            websockets,
            needed,
        )


class uWSGIWebsocketServer(WebsocketWSGIServer):  # noqa: N801 - the name ws4redis used
    """The websocket vassal's WSGI application under uWSGI with ``--gevent``.

    After the handshake a websocket leaves its uWSGI request
    (:mod:`ws4redis_uwsgi.server.detached`): the request, its core and its buffers
    are free for the next handshake, and an idle websocket costs about 2 KiB
    instead of about 30. Not on sockets whose state uWSGI keeps (TLS, HTTP
    keep-alive: :data:`KEEPS_THE_SOCKET`), nor when :attr:`detach` is False;
    those websockets are served inside their request, as before.
    """

    #: Whether websockets leave their uWSGI request after the handshake.
    detach = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The detached websockets this process serves.
        self.sessions: set[DetachedSession] = set()
        #: The same, by when their keep-alive is next due (see :meth:`_keepalive`).
        self.keepalive = KeepAliveWheel(KEEPALIVE_ROUND)
        # What this server starts once in each process (each server watches and pings its own websockets).
        self._reload_watch_name = f"reload watched by {id(self):x}"
        self._keepalive_name = f"keep-alive loop of {id(self):x}"
        if uwsgi is not None:
            # In the process that loads the application: the master, whose workers inherit it, or each worker (lazy-apps).
            tune_collector(settings.get("WS4REDIS_GC_FULL_THRESHOLD"))
            check_descriptors(int(uwsgi.cores), limits.max_connections())
            self._start_drain_in_workers()

    def _start_drain_in_workers(self) -> None:
        """Every worker drains the durable outbox, whether a websocket came or not: from its start.

        (A hook set later in the master, as importing ``uwsgidecorators`` does, replaces this one:
        the worker's first websocket starts the drain then, see :meth:`_start_drain`.)
        """
        if uwsgi.worker_id() > 0:  # the application is loaded in the worker (lazy-apps)
            self._start_drain()
            return
        previous = getattr(uwsgi, "post_fork_hook", None)

        def post_fork() -> None:
            if previous is not None:
                previous()
            if uwsgi.worker_id() > 0:
                self._start_drain()

        uwsgi.post_fork_hook = post_fork

    def _start_drain(self) -> None:
        """The worker's own services, once per process: the outbox drain, metrics and health."""
        process.resource("worker services started", self._start_services)

    @staticmethod
    def _start_services() -> bool:
        start_drain()
        ops_endpoint.start()
        return True

    def _watch_reload(self) -> None:
        """In each worker, close websockets with 1012 when uWSGI reloads or stops it.

        uWSGI tells a worker to finish gracefully with SIGHUP (reload) and
        SIGTERM; its gevent loop then waits for running requests, which for
        websockets would be forever. gevent allows several handlers per signal,
        so uWSGI's own still runs. Detached websockets are no requests, so
        uWSGI does not wait for them: ``uwsgi.atexit``, which the gevent loop
        calls before the worker exits, closes them and waits until they are.
        """
        process.resource(self._reload_watch_name, self._install_reload_watch)

    def _install_reload_watch(self) -> bool:
        for signum in (signal.SIGHUP, signal.SIGTERM):
            gevent.signal_handler(signum, self.shutdown)
        previous = getattr(uwsgi, "atexit", None)

        def atexit() -> None:
            try:
                # Detached websockets are no requests: uWSGI did not wait for them.
                self.close_all(timeout=CLOSE_TIMEOUT + CLOSE_LINGER + 0.5)
            finally:
                if previous is not None:
                    previous()

        uwsgi.atexit = atexit
        return True

    def shutdown(self) -> None:
        super().shutdown()
        for session in tuple(self.sessions):
            session.wake()

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

    def can_detach(self, environ: dict[str, Any]) -> bool:
        """Whether this request's websocket may leave the request after the handshake."""
        return self.detach and environ.get("wsgi.url_scheme") != "https" and not self._sockets_keep_state()

    @functools.cache  # noqa: B019 - one server per process, and uWSGI's options never change
    def _sockets_keep_state(self) -> bool:
        """Whether uWSGI was given a socket option of :data:`KEEPS_THE_SOCKET`."""
        options = getattr(uwsgi, "opt", None) or {}
        return any(name in options for name in KEEPS_THE_SOCKET)

    def upgrade_websocket(self, environ: dict[str, Any], start_response: StartResponse) -> Websocket:
        if uwsgi is None:
            raise RuntimeError("uWSGIWebsocketServer runs only inside uWSGI")
        self._watch_reload()
        fd = self._descriptor_for(environ)  # before the 101, so that a refusal is still possible
        try:
            protocol = chosen_protocol(offered_protocols(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")))
            uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", ""), protocol or "")
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            raise HandshakeError(f"uWSGI refused the handshake: {exc}") from None
        limits = websocket_limits()
        if fd is not None:
            forget_in_event_loop(uwsgi.connection_fd())  # uWSGI is done with it; our duplicate lives on
            return DetachedWebsocket(fd, limits.max_message_size, limits.send_buffer)
        # Behind uWSGI's own TLS the socket carries ciphertext: no raw writes there.
        return uWSGIWebsocket(direct=environ.get("wsgi.url_scheme") != "https", send_buffer=limits.send_buffer)

    def _descriptor_for(self, environ: dict[str, Any]) -> int | None:
        """The descriptor a detached websocket keeps (a duplicate of the request's), or None when it stays in its request.

        :raises ServerBusyError: the worker has no descriptor left (EMFILE): 503, not a 101 and a drop.
        """
        if not self.can_detach(environ):
            return None
        try:
            return os.dup(uwsgi.connection_fd())
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise ServerBusyError("no file descriptor left, retry later") from None
            raise

    def run_websocket(self, websocket: Websocket, subscriber: RedisSubscriber, path: str) -> None:
        self._start_drain()
        if not isinstance(websocket, DetachedWebsocket):
            super().run_websocket(websocket, subscriber, path)
            return
        self._start_keepalive()
        session = DetachedSession(self, websocket, subscriber, path, self.sessions, self.keepalive)
        # Returns once the first messages are sent; uWSGI then ends the request.
        session.start()
        self._schedule_keepalive(session, websocket_limits())

    def _start_keepalive(self) -> None:
        process.resource(self._keepalive_name, lambda: gevent.spawn(self._keepalive))

    def _keepalive(self) -> None:
        """Ping detached websockets as uWSGI pings the ones it frames, and end those that stopped answering.

        Every ``KEEPALIVE_ROUND`` seconds, uWSGI's rule decides for the websockets that may be
        due (:class:`KeepAliveWheel`: not all of them each round), which then go back by their next due time.
        """
        limits = websocket_limits()
        while True:
            gevent.sleep(KEEPALIVE_ROUND)
            self._keepalive_round(time.monotonic(), limits)

    def _keepalive_round(self, now: float, limits: WebsocketLimits) -> None:
        """One keep-alive round: the websockets due by ``now``, :data:`KEEPALIVE_BATCH` at a time, the worker running between."""
        for index, session in enumerate(self.keepalive.take_due(now)):
            if index and not index % KEEPALIVE_BATCH:
                gevent.sleep(0)  # deliveries, handshakes and the websockets' turns waiting meanwhile go first
            if session not in self.sessions:
                continue  # it ended while the worker ran
            websocket: DetachedWebsocket = session.websocket  # type: ignore[assignment]
            if not websocket.keep_alive(now, limits.ping_freq, limits.pong_tolerance):
                logger.info("websocket on %s: no pong within %g seconds, closing", loggable(session.path), limits.pong_tolerance)
                session.wake()
            self._schedule_keepalive(session, limits)

    def _schedule_keepalive(self, session: DetachedSession, limits: WebsocketLimits) -> None:
        """Put ``session`` in the keep-alive wheel by its next due time, unless it ended already."""
        if session in self.sessions:
            websocket: DetachedWebsocket = session.websocket  # type: ignore[assignment]
            self.keepalive.schedule(session, websocket.keepalive_due(limits.ping_freq, limits.pong_tolerance))
