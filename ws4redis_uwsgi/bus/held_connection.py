"""A connection one greenlet holds for itself: read commands sent and their replies read on it directly.

Through ``client.execute_command`` (or a pipeline's ``execute``) redis-py
takes a connection from its pool, checks that it holds no stale replies (a
poll of its socket), records the pool's state for its observability hooks,
wraps the call in its retry policy and gives the connection back: under
gevent about 40 µs of the worker's CPU per call, more than the command
itself (``MGET`` of two keys: about 75 µs through the client, about 30 µs
on a held connection). The batched readers
(:mod:`~ws4redis_uwsgi.bus.batched_reader`) send one command or pipeline at a
time from one greenlet and read every reply: a connection of their own needs
none of that. Replies are parsed by the client's own response callbacks, so
callers get what the client would have given them.

Only for one Redis (standalone or behind Sentinel: the connection asks the
sentinels for the master whenever it connects, and is dropped once the
sentinels name another one); a Cluster client routes each command by its
slot and is used as it is.
"""

from __future__ import annotations

from typing import Any

import redis

from .connection import master_moved

#: Errors after which the command is sent once more on a fresh connection, when the held connection
#: was connected before the call: it may have been cut while it idled (Redis restarted, a failover,
#: an idle timeout). Not a timeout: a Redis that does not answer would make every caller wait twice.
_RETRIED = (redis.ConnectionError,)


class HeldConnection:
    """One connection of ``client``'s pool, kept by its only user (see the module docstring); not for concurrent use."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._connection: Any = None

    def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to ``commands`` (each a command name and its arguments), sent as one pipeline without MULTI.

        :raises redis.RedisError: what the client would raise; the first
            error reply after every reply was read, so the connection stays in step.
        """
        idle = self._connection is not None and self._connection._sock is not None
        try:
            return self._execute(commands)
        except _RETRIED:
            if not idle:
                raise  # it failed to connect: redis-py's connect() has tried as its retry policy says
            return self._execute(commands)

    def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pool = self._client.connection_pool
        connection = self._connection
        if connection is None:
            connection = self._connection = pool.make_connection()
        elif master_moved(pool, connection) is not None:
            connection.disconnect()  # the sentinels name another master now
        if connection._sock is None:
            # connect(), not the implicit connect of a send: only connect() asks a Sentinel for its master
            # (a send would go to redis-py's default, localhost:6379).
            connection.connect()
        replies: list[Any] = []
        error: redis.ResponseError | None = None
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            for command in commands:
                try:
                    replies.append(self._client.parse_response(connection, command[0]))
                except redis.ResponseError as exc:  # an error reply: the others still follow
                    error = error or exc
                    replies.append(exc)
        except BaseException:
            # A reply not read (a timeout, a cut connection, a greenlet killed) would be read by the next command.
            connection.disconnect()
            raise
        if error is not None:
            raise error
        return replies

    def close(self) -> None:
        """Drop the connection (made again by the next command)."""
        if self._connection is not None:
            self._connection.disconnect()
