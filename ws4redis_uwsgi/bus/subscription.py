"""One pub/sub connection of the hub: the commands it sends and the replies it reads.

Why the hub does not read through redis-py's ``PubSub``: its layers (the
retry wrapper, the parser's buffering, a dict per message, its own
book-keeping of channels) cost the worker about 15 µs per reply, tens of
µs inside a busy worker; hiredis alone parses one in about 1.5 µs. A worker
reads one reply per message on a channel it holds and one per channel that
a websocket's arrival or departure subscribes or leaves (a logged-in user's
own channel, twice per page a user opens): with per-user messages that is
most of what a delivery costs.

So on a plain TCP or Unix connection (:class:`RawSubscription`) redis-py
still opens the connection (authentication, the protocol, the database, the
client name, the master a Sentinel names), while the hub writes its
(un)subscriptions to the socket itself (redis-py's gevent ``sendall`` with
its timeout costs about 20 µs more per command, and a logged-in websocket
sends two) and reads it itself, without waiting, letting hiredis parse (RESP2
or RESP3: in both a message is a list ``[kind, channel, data]``). Over TLS,
or on a socket Python would wait on before reading (a blocking socket with
a timeout, outside gevent), redis-py's ``PubSub`` does it all
(:class:`PubSubSubscription`). Both give the hub the same :class:`Reply` values.

A raw connection may also read the stored messages of the channels it
subscribes, in the same round trip (``read_stored``): it asks Redis for
RESP3 (``HELLO 3``, Redis 6 and later), where a subscribed connection may
send any command, and follows a ``SUBSCRIBE`` with an ``MGET`` of the same
names (a channel's stored message is kept under its own name). Redis runs
them in order, so the values are read after the subscription took effect.
hiredis gives RESP3 pushes (messages, confirmations) as
``hiredis.PushNotification`` and replies to commands as anything else,
which come in the order the commands went: the ``MGET``'s values come out as
``stored`` replies. Where Redis refuses ``HELLO 3``, the connection stays
RESP2 and reads nothing more.
"""

from __future__ import annotations

import _socket
import socket
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import hiredis
import redis
from redis.sentinel import SentinelConnectionPool

from .connection import master_moved

#: Bytes read from the socket at a time.
READ_SIZE = 64 * 1024
#: What hiredis (3.2 and later) makes of a RESP3 push; older versions give pushes and replies alike as lists,
#: and their connections read no stored messages.
PUSH_NOTIFICATION: type | None = getattr(hiredis, "PushNotification", None)


class Reply(NamedTuple):
    """A reply on a subscribed connection: ``kind`` as Redis names it (``message``, ``subscribe``, ``smessage``, ``pong``...).

    And ``stored``: the value stored under ``channel`` (None: none), read right after its subscription (``read_stored``).
    """

    kind: str
    channel: str | None
    data: Any


class Subscription(Protocol):
    """What the hub's link does with its connection."""

    def subscribe(self, channels: Iterable[str], read_stored: bool = False) -> None: ...
    def unsubscribe(self, channels: Iterable[str]) -> None: ...
    def ping(self) -> None: ...
    def fileno(self) -> int: ...
    def replies(self) -> Iterator[Reply]: ...
    def close(self) -> None: ...
    def master_elsewhere(self) -> tuple[str, int] | None: ...

    #: Who parses the replies: ``hiredis`` (read by the hub) or ``redis-py`` (its PubSub).
    reader: str
    #: Whether the connection is to the master a Sentinel names (which :meth:`master_elsewhere` can tell moved).
    on_sentinel: bool
    #: Whether ``subscribe(..., read_stored=True)`` reads the channels' stored messages (RESP3 granted).
    reads_stored: bool


def open_subscription(client: redis.Redis, sharded: bool, read_stored: bool = False) -> Subscription:
    """A connection of ``client``'s for subscriptions (``SSUBSCRIBE`` when ``sharded``), connected.

    With ``read_stored`` (not for ``sharded``, nor with a hiredis older than 3.2), it asks for RESP3 so that
    it can read stored messages too.
    """
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.connect()
        raw = _raw_socket(connection)
    except BaseException:
        pool.release(connection)
        raise
    if raw is not None:
        reads = read_stored and not sharded and PUSH_NOTIFICATION is not None
        return RawSubscription(client, connection, raw, sharded, read_stored=reads)
    pool.release(connection)  # redis-py's PubSub takes one of its own
    return PubSubSubscription(client, sharded)


def _raw_socket(connection: Any) -> _socket.socket | None:
    """The connection's socket, readable without waiting; None where redis-py must read (TLS, a socket that waits)."""
    if isinstance(connection, redis.SSLConnection):
        return None
    sock = getattr(connection, "_sock", None)
    raw = getattr(sock, "_sock", sock)  # under gevent, the socket it wraps (never waits)
    if not isinstance(raw, _socket.socket) or raw.gettimeout() not in (None, 0.0):
        return None  # a timeout makes Python wait for data before reading
    return raw


def _on_sentinel(client: redis.Redis) -> bool:
    return isinstance(client.connection_pool, SentinelConnectionPool)


def _name(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if value is None or isinstance(value, str) else str(value)


class RawSubscription:
    """Commands through redis-py's connection, replies read from its socket and parsed by hiredis."""

    #: For the hub's log line.
    reader = "hiredis"

    def __init__(
        self, client: redis.Redis, connection: Any, raw: _socket.socket, sharded: bool, read_stored: bool = False
    ) -> None:
        # The client, not only its pool: a client that is collected disconnects its pool's connections.
        self._client = client
        self._connection = connection
        self._raw = raw
        self._sharded = sharded
        self._reader = hiredis.Reader()
        self._buffer = bytearray(READ_SIZE)
        self.on_sentinel = _on_sentinel(client)
        self.reads_stored = False
        #: With RESP3, the replies owed to commands, in order: the channels of an MGET, or None for a PING.
        self._owed: deque[tuple[str, ...] | None] = deque()
        #: Whether the next reply is HELLO's (the first command on the connection).
        self._hello = read_stored
        if read_stored:
            self._write(hiredis.pack_command(("HELLO", "3")))  # type: ignore[arg-type] # its stub types a tuple of one

    def master_elsewhere(self) -> tuple[str, int] | None:
        """Where the sentinels say the master is now, when it is not where this connection goes."""
        return master_moved(self._client.connection_pool, self._connection)

    def subscribe(self, channels: Iterable[str], read_stored: bool = False) -> None:
        self._send("SSUBSCRIBE" if self._sharded else "SUBSCRIBE", channels, read_stored and self.reads_stored)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        self._send("SUNSUBSCRIBE" if self._sharded else "UNSUBSCRIBE", channels)

    def _send(self, command: str, channels: Iterable[str], read_stored: bool = False) -> None:
        names = list(channels)
        if not names:
            return
        # A Cluster takes one slot per SSUBSCRIBE, and each channel has its own hash tag.
        commands: list[tuple[str, ...]] = [(command, name) for name in names] if self._sharded else [(command, *names)]
        if read_stored:
            # After the SUBSCRIBE: Redis runs it first, so nothing published in between is missed.
            # MGET, not GET: it answers None for a key of another type instead of an error.
            commands.append(("MGET", *names))
            self._owed.append(tuple(names))
        self._write(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type] # its stub types a tuple of one

    def _write(self, data: bytes) -> None:
        """Write ``data`` without waiting; what the socket cannot take now goes through redis-py's write, which waits."""
        try:
            sent = self._raw.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise redis.ConnectionError(f"Error writing to Redis: {exc}") from exc
        if sent < len(data):
            self._connection.send_packed_command([data[sent:]], check_health=False)

    def ping(self) -> None:
        self._connection.send_command("PING", check_health=False)
        if self.reads_stored or self._hello:
            # With RESP3 its answer is a reply, not a push (with RESP2 the marker is never taken: nothing is owed there).
            self._owed.append(None)

    def fileno(self) -> int:
        return self._raw.fileno()

    def replies(self) -> Iterator[Reply]:
        """Every reply the socket holds now, then stop (never waits); raises when the connection failed."""
        reader = self._reader
        while True:
            reply = reader.gets()
            if reply is False:
                if not self._fill():
                    return
                continue
            if self._hello:  # HELLO's answer: RESP3 from now on, or (an older Redis, a refusal) RESP2 as before
                self._hello = False
                self.reads_stored = not isinstance(reply, hiredis.ReplyError)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))  # a Cluster's MOVED, say: the link reconnects where it lives now
            if self.reads_stored and not isinstance(reply, PUSH_NOTIFICATION):  # type: ignore[arg-type] # not None then
                yield from self._owed_reply(reply)
            elif isinstance(reply, list) and reply:
                kind = _name(reply[0]) or ""
                yield Reply(kind, _name(reply[1]) if len(reply) > 1 else None, reply[2] if len(reply) > 2 else None)
            else:
                yield Reply(_name(reply) or "", None, None)  # PONG before any subscription

    def _owed_reply(self, reply: Any) -> Iterator[Reply]:
        """A RESP3 reply to one of this connection's commands, the oldest that is owed one."""
        owed = self._owed.popleft() if self._owed else None
        if owed is None:
            yield Reply("pong", None, None)  # a PING's, with no channel: the hub only notes that Redis answered
            return
        if isinstance(reply, list) and len(reply) == len(owed):  # else the handshakes read them themselves
            for channel, value in zip(owed, reply, strict=True):
                yield Reply("stored", channel, value)

    def _fill(self) -> bool:
        """Feed what the socket holds to the parser; False when it holds nothing now."""
        try:
            count = self._raw.recv_into(self._buffer, READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise redis.ConnectionError(f"Error reading from Redis: {exc}") from exc
        if count == 0:
            raise redis.ConnectionError("Redis closed the subscription connection")
        try:
            self._reader.feed(self._buffer, 0, count)  # type: ignore[arg-type] # hiredis reads any buffer
        except hiredis.ProtocolError as exc:
            raise redis.ConnectionError(f"Redis protocol error: {exc}") from exc
        return True

    def close(self) -> None:
        try:
            self._connection.disconnect()
        finally:
            self._client.connection_pool.release(self._connection)


class PubSubSubscription:
    """redis-py's ``PubSub`` for all of it (TLS, a socket that waits)."""

    reader = "redis-py"
    #: Its stored messages are read by the handshakes (it never asks for RESP3).
    reads_stored = False

    def __init__(self, client: redis.Redis, sharded: bool) -> None:
        self._client = client  # kept: a client that is collected disconnects its pool's connections
        self._pubsub = client.pubsub()
        self._sharded = sharded
        self.on_sentinel = _on_sentinel(client)

    def master_elsewhere(self) -> tuple[str, int] | None:
        """Where the sentinels say the master is now, when it is not where this connection goes."""
        return master_moved(self._client.connection_pool, self._pubsub.connection)

    def subscribe(self, channels: Iterable[str], read_stored: bool = False) -> None:
        self._send(self._pubsub.ssubscribe, self._pubsub.subscribe, channels)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        self._send(self._pubsub.sunsubscribe, self._pubsub.unsubscribe, channels)

    def _send(self, sharded_command: Any, command: Any, channels: Iterable[str]) -> None:
        names = list(channels)
        if self._sharded:
            for name in names:  # one slot per SSUBSCRIBE
                sharded_command(name)
        elif names:
            command(*names)

    def ping(self) -> None:
        self._pubsub.ping()

    def fileno(self) -> int:
        # redis-py offers no public accessor for the socket; ws4redis used the same.
        return self._pubsub.connection._sock.fileno()  # type: ignore[no-any-return]

    def replies(self) -> Iterator[Reply]:
        """Every reply redis-py has buffered or the socket holds, then stop.

        Reading only after ``can_read`` says a reply is there, and then
        reading it whole, means a message split across TCP segments is never
        cut short by a zero timeout.
        """
        connection = self._pubsub.connection
        while connection.can_read(timeout=0):
            response = self._pubsub.parse_response(block=True)
            if response is None:
                continue
            message = self._pubsub.handle_message(response)
            if message is not None:
                yield Reply(message["type"], _name(message.get("channel")), message.get("data"))

    def close(self) -> None:
        self._pubsub.close()
