"""A websocket's client socket by its descriptor: direct writes, writes that wait, closing with linger.

Both kinds of uWSGI websockets write here: the ones that stay in their uWSGI
request (:class:`~ws4redis_uwsgi.server.uwsgi.uWSGIWebsocket`) and the ones
that leave it (:class:`~ws4redis_uwsgi.server.detached.DetachedWebsocket`).
The hub writes a frame it built once for all clients straight to each socket
(:meth:`RawSocket.try_write`); the websocket's own greenlet writes what must
wait, and closes. A client that is gone, by whatever errno, needs no close
frame: closing never raises for it.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.monkey
import gevent.socket

from .. import process
from ..bus.fanout import copied_in_c
from ..core.close_codes import CloseCode, close_frame
from ..core.exceptions import SlowConsumerError, WebSocketError
from .limits import CLOSE_LINGER, CLOSE_LINGER_BYTES, CLOSE_TIMEOUT, PENDING_WRITE_TIMEOUT


def _nothing() -> None:
    pass


class RawSocket:
    """One websocket's socket, by descriptor, and the rules for writing to it.

    Two ways out never interleave: a direct write (:meth:`try_write`, from
    any greenlet) happens only while no other write of this websocket is
    under way (:attr:`_busy`) and nothing of an earlier frame is left
    (:attr:`_pending`); every other write first finishes what a direct write
    left. gevent switches greenlets only where they wait, so these checks
    cannot be overtaken.
    """

    __slots__ = ("_busy", "_fd", "_pending", "closed", "wake")

    def __init__(self, fd: int, send_buffer: int | None = None) -> None:
        self._fd = fd
        self.closed = False
        #: Wakes this websocket's loop when a direct write left part of a frame; set by direct_writer().
        self.wake: Callable[[], None] = _nothing
        self._pending = b""  # the rest of a frame a direct write could not finish
        self._busy = False  # inside a write (or an uwsgi.* call that may write)
        limit_send_buffer(fd, send_buffer)

    def get_file_descriptor(self) -> int:
        return self._fd

    def direct_writer(self, wake: Callable[[], None]) -> RawSocket | None:
        """This socket, for the hub to write whole frames to at once (:meth:`try_write`); ``wake`` finishes a partial one."""
        self.wake = wake
        return self

    @copied_in_c("try_write")
    def try_write(self, frame: bytes) -> bool:
        """Write a complete frame now, from any greenlet; False when that is not possible without waiting."""
        if self.closed or self._busy or self._pending:
            return False
        try:
            written = os.write(self._fd, frame)
        except OSError:  # would block, or broken: the websocket's own greenlet takes over
            return False
        if written < len(frame):
            self._keep_rest(frame, written)
        return True

    def _keep_rest(self, frame: bytes, written: int) -> None:
        """A direct write took only ``written`` bytes of ``frame``: the websocket's loop writes the rest.

        The C loop of ``bus/_fanout.c`` calls this method (it does not copy it).
        """
        self._pending = frame[written:]
        self.wake()

    def give_up(self) -> None:
        """The client fell too far behind: a write to it that waits now fails at once; without one, nothing happens.

        Why: the hub noticed, but the websocket's own greenlet may be waiting
        up to its timeout for a client that takes nothing, and could only
        close it afterwards. The connection is reset (what waits in the
        kernel for the client is dropped), which wakes that write; it raises
        :class:`SlowConsumerError`, as a write that timed out does.
        """
        if self._busy and not self.closed:
            self.closed = True  # what the waiting write finds (write_failed)
            abort_on_close(self._fd)
            try:
                _on_fd(self._fd, lambda sock: sock.shutdown(socket.SHUT_RDWR))
            except OSError:
                pass  # the client is gone already: the write fails all the same

    def send_frame(self, frame: bytes, timeout: float) -> None:
        """Write ``frame`` whole within ``timeout`` seconds.

        :raises SlowConsumerError: the client did not take all of it within
            ``timeout``, or fell too far behind meanwhile (:meth:`give_up`); the connection is reset.
        :raises WebSocketError: the client is gone.
        """
        self._finish_pending()
        self._send_whole(frame, timeout)

    def _finish_pending(self) -> None:
        if self._pending:
            try:
                self._send_whole(self._pending, PENDING_WRITE_TIMEOUT)
            finally:
                self._pending = b""

    def _send_whole(self, data: bytes, timeout: float) -> None:
        """Write ``data`` whole within ``timeout``; a client that does not take it in time, or is given up on, is reset."""
        self._busy = True
        try:
            self._write_all(data, timeout=timeout)
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                # Part of a frame may be out: nothing else can follow it. Reset the connection.
                self.closed = True
                abort_on_close(self._fd)
                raise SlowConsumerError(f"the client did not take a frame within {timeout:g} s") from None
            raise self.write_failed() from None
        finally:
            self._busy = False

    def write_failed(self) -> WebSocketError:
        """What a write that failed raises: the client is gone, or was given up on while it waited (:meth:`give_up`)."""
        if self.closed:  # nothing else closes a socket while a write to it waits
            return SlowConsumerError("the client fell too far behind while a frame to it waited")
        return WebSocketError("websocket closed while sending")

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame with ``code``, then wait briefly for the client to close its side.

        Never raises for a client that is gone. The descriptor is closed later
        (by uWSGI when the request ends, or by :meth:`dispose`); bytes from
        the client still unread then (a pong, its close frame) would make the
        kernel send a reset, and the client would lose frames it had not read
        yet.
        """
        if self.closed:
            return
        self.closed = True
        frame = self._pending + close_frame(code, reason)
        self._pending = b""
        try:
            self._write_all(frame, timeout=CLOSE_TIMEOUT)
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

    def dispose(self) -> None:
        """Close a descriptor this websocket owns; nothing for one its uWSGI request owns.

        It also lets go of the loop's wake, which refers back to the session that holds this
        socket: a cycle that only a full garbage collection would free, walked by every one until then.
        """
        self.wake = _nothing

    def _write_all(self, data: bytes, timeout: float) -> None:
        """Write ``data`` whole, all of it within ``timeout`` seconds of the first wait.

        A deadline, not a timeout per wait: a client that takes a few bytes now
        and then would otherwise hold the write (and its websocket) for ever.
        """
        deadline = None
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                if now >= deadline or not _writable_within(self._fd, deadline - now):
                    raise OSError(errno.ETIMEDOUT, "the client did not take it within the timeout") from None

    def _discard_until_eof(self, timeout: float) -> None:
        """Read and drop what the client still sends, until it closes its side or ``timeout`` passed.

        Reading on while the client still sends (the rest of a message that was
        too big, say) lets it read the close frame: closing with unread bytes
        would reset the connection and could lose it. Each read lets the other
        websockets run first, and a client that sends more than
        :data:`~ws4redis_uwsgi.server.limits.CLOSE_LINGER_BYTES` (a flood) is reset.
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


def _writable_within(fd: int, seconds: float) -> bool:
    """Wait (this greenlet) until ``fd`` takes more bytes, or is reset; False after ``seconds``."""
    try:
        gevent.socket.wait_write(fd, timeout=seconds)
    except gevent.socket.timeout:
        return False
    return True


def _on_fd(fd: int, action: Callable[[_socket.socket], object]) -> None:
    """Apply ``action`` to ``fd`` through a plain C-level socket object, then let go of it.

    Not a gevent socket (its creation sets up watchers), and no dup() and
    close(): uWSGI or the websocket owns the descriptor and closes it. The
    family and type are given, not asked of the kernel (three system calls
    per handshake): the actions here (socket-level options, shutdown) work
    alike on TCP and Unix stream sockets.
    """
    sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        action(sock)
    finally:
        sock.detach()


def shutdown_write(fd: int) -> None:
    """Send FIN on ``fd`` without closing it (uWSGI or the websocket owns the descriptor)."""
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


def forget_in_event_loop(fd: int) -> None:
    """Take ``fd`` out of the event loop's epoll set before uWSGI closes it while a duplicate lives on.

    libev never deletes a descriptor from its epoll set: it counts on close()
    to do it. But epoll forgets a registration only when the last descriptor
    of the socket closes, and a detached websocket keeps a duplicate of its
    request's descriptor (:mod:`~ws4redis_uwsgi.server.detached`): when uWSGI
    closes the request's, its registration stays, and the socket's next event
    comes under a descriptor number libev no longer knows (closed, or already
    another connection's). libev then rebuilds its whole epoll set, one
    epoll_ctl per open websocket: during a reconnect storm that is once per
    handshake, and the worker accepted about 10 handshakes a second with
    8,000 websockets open (bench/storm.py). Deleting the registration here
    (through a duplicate of the loop's epoll descriptor, the same epoll set)
    leaves libev nothing stale; when it next registers that number it finds it
    missing and adds it, as it does after any close.
    """
    epoll = _loop_epoll()
    if epoll is None:
        return
    try:
        epoll.unregister(fd)
    except OSError:
        pass  # not registered (another backend, or uWSGI never waited on it)


def close_descriptor(fd: int) -> None:
    """``close(2)`` itself, not gevent's cooperative ``os.close`` (which monkey-patching installs since gevent 25.8.1).

    gevent's checks the descriptor and stats it (two more system calls) and
    defers the close to a callback of the event loop, in case a watcher still
    waits on it: about 8 µs against 0.7 per close on a slow day, once per
    websocket. A websocket's descriptor is closed only after its watchers
    stopped, as libev asks (and as every gevent before 25.8.1 assumed).
    """
    _close(fd)


_close = gevent.monkey.get_original("os", "close")
_LOOP_EPOLL = "event loop epoll duplicate"


class _LoopDuplicate:
    """Our duplicate of one event loop's epoll descriptor; :func:`ws4redis_uwsgi.process.forget` and ``reset`` close it."""

    __slots__ = ("backend", "epoll", "loop")

    def __init__(self, loop: Any, backend: int, epoll: Any) -> None:
        self.loop = loop
        self.backend = backend
        self.epoll = epoll

    def close(self) -> None:
        self.epoll.close()


def _loop_epoll() -> Any:
    """A duplicate of the event loop's epoll descriptor (the same epoll set), made once per process and loop; None without one.

    Once, not per handshake: a duplicate and its close cost a third of an
    anonymous handshake's time in the worker's upgrade. It is kept with the
    process's other resources (:mod:`ws4redis_uwsgi.process`), so a forked
    worker makes its own.
    """
    try:
        loop = gevent.get_hub().loop
        backend = loop.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    if not isinstance(backend, int) or backend < 0:
        return None
    held = process.existing(_LOOP_EPOLL)
    if held is not None and held.loop is loop and held.backend == backend:
        return held.epoll
    try:
        # gevent's monkey-patching takes epoll out of the select module: the original, then.
        epoll_class = gevent.monkey.get_original("select", "epoll")
        epoll = epoll_class.fromfd(os.dup(backend))
    except (AttributeError, ImportError, OSError):  # not Linux, or not an epoll loop
        return None
    process.forget(_LOOP_EPOLL)  # this process's loop changed: its old duplicate goes
    return process.resource(_LOOP_EPOLL, lambda: _LoopDuplicate(loop, backend, epoll)).epoll
