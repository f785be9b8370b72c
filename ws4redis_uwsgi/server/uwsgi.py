"""The uWSGI adapter: websockets under uWSGI with gevent.

uWSGI performs the handshake (``uwsgi.websocket_handshake``). After that a
websocket normally leaves its uWSGI request (:mod:`ws4redis_uwsgi.detached`):
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

import _socket
import errno
import functools
import logging
import os
import resource
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket

from .. import settings
from ..core.close_codes import CloseCode, close_frame
from ..core.envelope import outgoing
from ..core.exceptions import HandshakeError, ServerBusyError, WebSocketError
from .loop import StartResponse, Websocket, WebsocketWSGIServer

if TYPE_CHECKING:
    from ..bus.subscriber import RedisSubscriber
    from .detached import DetachedSession

logger = logging.getLogger("ws4redis_uwsgi")

#: Seconds a closing websocket waits for the client to close its side.
CLOSE_LINGER = 2.0
#: Bytes a closing websocket reads and drops while it waits; a client that sends more is reset.
CLOSE_LINGER_BYTES = 4 * 1024 * 1024
#: Seconds the rest of a directly written frame may take before the client counts as gone.
PENDING_WRITE_TIMEOUT = 10.0
#: uWSGI options whose sockets keep state a detached websocket would lose: TLS
#: (the socket carries ciphertext) and HTTP keep-alive (uWSGI reads the next
#: request from the socket after the response).
KEEPS_THE_SOCKET = ("http11-socket", "https-socket", "ssl-socket", "suwsgi-socket")


def _nothing() -> None:
    pass


def uwsgi_option(*names: str) -> str | None:
    """The value of the first of ``names`` (aliases of one option) given to uWSGI, the last if repeated."""
    options = getattr(uwsgi, "opt", None) or {}
    for name in names:
        value = options.get(name)
        if isinstance(value, list):
            value = value[-1] if value else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value is not None:
            return str(value)
    return None


def uwsgi_number(default: float, *names: str) -> float:
    value = uwsgi_option(*names)
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


class uWSGIWebsocket:  # noqa: N801 - the name ws4redis used
    """One websocket of the current uWSGI request.

    Two ways out: uWSGI's own ``websocket_send`` from the request's greenlet,
    and :meth:`try_write`, which the hub calls to write a frame it built once
    for all clients straight to the socket. The two never interleave: a
    direct write happens only while no ``uwsgi.*`` call of this websocket is
    under way and nothing of an earlier frame is left to write, and every
    ``uwsgi.*`` call first finishes what a direct write left (gevent switches
    greenlets only where they wait, so these checks cannot be overtaken).
    """

    __slots__ = ("_busy", "_fd", "_pending", "closed", "direct", "wake")

    def __init__(self, direct: bool = True, fd: int | None = None) -> None:
        #: The client socket: the request's own, or a descriptor of a detached websocket.
        self._fd: int = uwsgi.connection_fd() if fd is None else fd
        self.closed = False
        #: Whether raw writes to the socket are safe (not for TLS sockets uWSGI encrypts).
        self.direct = direct
        #: Wakes this websocket's greenlet; set by the server.
        self.wake: Callable[[], None] = _nothing
        self._pending = b""  # the rest of a frame a direct write could not finish
        self._busy = False  # inside a uwsgi.* call that may write
        limit_send_buffer(self._fd, settings.get("WS4REDIS_SEND_BUFFER"))

    def get_file_descriptor(self) -> int:
        return self._fd

    def try_write(self, frame: bytes) -> bool:
        """Write a complete frame now, from any greenlet; False when that is not possible without waiting."""
        if not self.direct or self.closed or self._busy or self._pending:
            return False
        try:
            written = os.write(self._fd, frame)
        except OSError:  # would block, or broken: the websocket's own greenlet takes over
            return False
        if written < len(frame):
            self._pending = frame[written:]
            self.wake()
        return True

    def _finish_pending(self) -> None:
        if self._pending:
            self._busy = True
            try:
                self._write_all(self._pending, timeout=PENDING_WRITE_TIMEOUT)
            except OSError:
                raise WebSocketError("websocket closed while sending") from None
            finally:
                self._pending = b""
                self._busy = False

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
            raise WebSocketError("websocket closed while sending") from None
        finally:
            self._busy = False

    def flush(self) -> None:
        """Finish writing a frame a direct write left half done."""
        self._finish_pending()

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame with ``code``, then wait briefly for the client to close its side.

        Never raises for a client that is gone. uWSGI closes the socket when the request ends; bytes from the client
        still unread then (a pong, its close frame) would make the kernel
        send a reset, and the client would lose frames it had not read yet.
        """
        if self.closed:
            return
        self.closed = True
        frame = self._pending + close_frame(code, reason)
        self._pending = b""
        try:
            self._write_all(frame, timeout=1.0)
            shutdown_write(self._fd)
        except OSError as exc:
            # The client is gone, whatever the errno (EPIPE, ECONNRESET, ENOTCONN
            # after its reset, ...): nothing more to say to it.
            if exc.errno == errno.ETIMEDOUT:
                # The client reads nothing; whatever waits in the kernel for it
                # would still trickle out after the close: reset instead.
                abort_on_close(self._fd)
            return
        self._discard_until_eof(timeout=CLOSE_LINGER)

    def _write_all(self, data: bytes, timeout: float) -> None:
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:
                try:
                    gevent.socket.wait_write(self._fd, timeout=timeout)
                except gevent.socket.timeout:
                    raise OSError(errno.ETIMEDOUT, "the client took nothing within the timeout") from None

    def _discard_until_eof(self, timeout: float) -> None:
        """Read and drop what the client still sends, until it closes its side or ``timeout`` passed.

        Reading on while the client still sends (the rest of a message that was
        too big, say) lets it read the close frame: closing with unread bytes
        would reset the connection and could lose it. Each read lets the other
        websockets run first, and a client that sends more than
        :data:`CLOSE_LINGER_BYTES` (a flood) is reset.
        """
        deadline = time.monotonic() + timeout
        discarded = 0
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                data = os.read(self._fd, 65536)
                if not data:
                    return
                discarded += len(data)
                if discarded > CLOSE_LINGER_BYTES:
                    abort_on_close(self._fd)
                    return
                gevent.sleep(0)
            except BlockingIOError:
                try:
                    gevent.socket.wait_read(self._fd, timeout=remaining)
                except gevent.socket.timeout:
                    return
            except OSError:
                return


def _on_fd(fd: int, action: Callable[[_socket.socket], object]) -> None:
    """Apply ``action`` to ``fd`` through a plain C-level socket object, then let go of it.

    Not a gevent socket (its creation sets up watchers), and no dup() and
    close(): uWSGI or the websocket owns the descriptor and closes it.
    """
    sock = _socket.socket(fileno=fd)
    try:
        action(sock)
    finally:
        sock.detach()


#: Descriptors a worker needs besides its clients' sockets: Redis and database
#: connections, logs, the listening socket, the event loop's.
FD_RESERVE = 64


def check_descriptors(cores: int) -> None:
    """Warn when uWSGI's ``max-fd`` cannot serve ``cores`` websockets.

    Each websocket holds a descriptor, and a handshake in progress two (the
    request's socket and the duplicate the websocket keeps). Past the limit a
    handshake is refused with 503 instead of being dropped, but the operator
    should size ``max-fd`` so that it does not happen.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * cores + FD_RESERVE
    if soft < needed:
        logger.warning(
            "max-fd is %d, but %d async cores can need %d descriptors: handshakes past it are refused with 503; "
            "raise uWSGI's max-fd (and the hard limit, LimitNOFILE= in systemd)",
            soft,
            cores,
            needed,
        )


def shutdown_write(fd: int) -> None:
    """Send FIN on ``fd`` without closing it (uWSGI owns and closes the descriptor)."""
    _on_fd(fd, lambda sock: sock.shutdown(socket.SHUT_WR))


def limit_send_buffer(fd: int, size: int | None) -> None:
    """Cap the kernel's send buffer of one websocket.

    Linux grows a socket's send buffer up to megabytes; for a client that
    stopped reading, that would hide the backlog from the bounded inbox (so
    it would never count as slow) and hold megabytes per stalled socket.
    """
    if size:
        _on_fd(fd, lambda sock: sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size))


def abort_on_close(fd: int) -> None:
    """Make the coming close of ``fd`` a reset that drops unsent data (SO_LINGER 0)."""
    try:
        _on_fd(fd, lambda sock: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)))
    except OSError:
        pass  # already closed


class uWSGIWebsocketServer(WebsocketWSGIServer):  # noqa: N801 - the name ws4redis used
    """The websocket vassal's WSGI application under uWSGI with ``--gevent``.

    After the handshake a websocket leaves its uWSGI request
    (:mod:`ws4redis_uwsgi.detached`): the request, its core and its buffers
    are free for the next handshake, and an idle websocket costs about 2 KiB
    instead of about 30. Not on sockets whose state uWSGI keeps (TLS, HTTP
    keep-alive: :data:`KEEPS_THE_SOCKET`), nor when :attr:`detach` is False;
    those websockets are served inside their request, as before.
    """

    #: Whether websockets leave their uWSGI request after the handshake.
    detach = True

    _watching_pid: int | None = None
    _keepalive_pid: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The detached websockets this process serves.
        self.sessions: set[DetachedSession] = set()
        if uwsgi is not None:
            check_descriptors(int(uwsgi.cores))

    def _watch_reload(self) -> None:
        """In each worker, close websockets with 1012 when uWSGI reloads or stops it.

        uWSGI tells a worker to finish gracefully with SIGHUP (reload) and
        SIGTERM; its gevent loop then waits for running requests, which for
        websockets would be forever. gevent allows several handlers per signal,
        so uWSGI's own still runs. Detached websockets are no requests, so
        uWSGI does not wait for them: ``uwsgi.atexit``, which the gevent loop
        calls before the worker exits, closes them and waits until they are.
        """
        if self._watching_pid == os.getpid():
            return
        self._watching_pid = os.getpid()
        for signum in (signal.SIGHUP, signal.SIGTERM):
            gevent.signal_handler(signum, self.shutdown)
        previous = getattr(uwsgi, "atexit", None)

        def atexit() -> None:
            try:
                # Detached websockets are no requests: uWSGI did not wait for them.
                self.close_all(timeout=1.0 + CLOSE_LINGER + 0.5)
            finally:
                if previous is not None:
                    previous()

        uwsgi.atexit = atexit

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

    def upgrade_websocket(self, environ: dict[str, Any], start_response: StartResponse) -> uWSGIWebsocket:
        if uwsgi is None:
            raise RuntimeError("uWSGIWebsocketServer runs only inside uWSGI")
        self._watch_reload()
        fd = self._descriptor_for(environ)  # before the 101, so that a refusal is still possible
        try:
            uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", ""))
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            raise HandshakeError(f"uWSGI refused the handshake: {exc}") from None
        if fd is not None:
            from .detached import DetachedWebsocket

            return DetachedWebsocket(fd, self._max_size())
        # Behind uWSGI's own TLS the socket carries ciphertext: no raw writes there.
        return uWSGIWebsocket(direct=environ.get("wsgi.url_scheme") != "https")

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

    @functools.cache  # noqa: B019 - one server per process, and uWSGI's options never change
    def _max_size(self) -> int:
        """The largest message a client may send to websockets framed here, in bytes.

        ``WS4REDIS_MAX_MESSAGE_SIZE`` or uWSGI's ``websocket-max-size`` (KiB,
        default 1024), the smaller: the frame parser refuses a message with
        1009 as soon as its frame headers announce more, before it is held.
        """
        uwsgi_limit = int(uwsgi_number(1024, "websocket-max-size", "websockets-max-size") * 1024)
        limit = settings.get("WS4REDIS_MAX_MESSAGE_SIZE")
        return min(uwsgi_limit, limit) if limit is not None else uwsgi_limit

    def run_websocket(self, websocket: Websocket, subscriber: RedisSubscriber, path: str) -> None:
        from .detached import DetachedSession, DetachedWebsocket

        if not isinstance(websocket, DetachedWebsocket):
            super().run_websocket(websocket, subscriber, path)
            return
        self._start_keepalive()
        # Returns once the first messages are sent; uWSGI then ends the request.
        DetachedSession(self, websocket, subscriber, path, self.sessions).start()

    def _start_keepalive(self) -> None:
        if self._keepalive_pid != os.getpid():
            self._keepalive_pid = os.getpid()
            gevent.spawn(self._keepalive)

    def _keepalive(self) -> None:
        """Ping detached websockets as uWSGI pings the ones it frames, and end those that stopped answering."""
        ping_freq = uwsgi_number(30, "websocket-ping-freq", "websockets-ping-freq")
        pong_tolerance = uwsgi_number(3, "websocket-pong-tolerance", "websockets-pong-tolerance")
        while True:
            gevent.sleep(self.poll_interval)
            now = time.monotonic()
            for session in tuple(self.sessions):
                if not session.websocket.keep_alive(now, ping_freq, pong_tolerance):
                    logger.info("websocket on %s: no pong within %g seconds, closing", session.path, pong_tolerance)
                    session.wake()
