"""Messages and the store that publishes them, as in ``ws4redis.redis_store``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import Histogram

from .. import settings
from ..core import envelope
from ..core.channels import Identity, named_channels, prefix_string, validate_facility
from ..core.exceptions import HandshakeError
from . import history, scripts
from .connection import is_cluster, sharded


class _SelfType:
    """Type of :data:`SELF`; a readable singleton."""

    def __repr__(self) -> str:
        return "SELF"


#: In ``users``, ``groups`` or ``sessions``: the requesting user's own name,
#: groups or session key.
SELF = _SelfType()


class RedisMessage(bytes):
    """A message as bytes: built from ``str`` (UTF-8 encoded), ``bytes`` or a pub/sub reply.

    As in ws4redis, ``RedisMessage(heartbeat)`` and ``RedisMessage(None)``
    give ``None``: the heartbeat is answered, never published.
    """

    def __new__(cls, value: Any) -> RedisMessage:  # type: ignore[misc]
        if value is None:
            return None  # type: ignore[return-value]
        if isinstance(value, list) and len(value) >= 3 and value[0] in (b"message", "message"):
            value = value[2]
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise TypeError(f"a message must be str or bytes, not {type(value).__name__}")
        heartbeat = settings.get("WS4REDIS_HEARTBEAT")
        if heartbeat is not None and data == heartbeat.encode("utf-8"):
            return None  # type: ignore[return-value]
        return super().__new__(cls, data)


def _names(value: Any, own: Iterable[str], argument: str) -> list[str]:
    """Resolve one audience argument (list with ``SELF``, ``True``, a string) to names."""
    if value is True:
        value = [SELF]
    elif value is False or value is None:
        value = []
    elif isinstance(value, str):
        value = [value]
    elif not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"argument `{argument}` must be a list or tuple")
    names: list[str] = []
    for item in value:
        names.extend(own if item is SELF else [str(item)])
    return names


def needs_identity(request: Any = None, groups: Any = (), users: Any = (), sessions: Any = (), **others: Any) -> bool:
    """Whether these publisher arguments need the request's user, groups or session (``SELF`` or ``True``, with a request)."""
    return request is not None and any(
        v is True or (isinstance(v, (list, tuple, set, frozenset)) and SELF in v) for v in (groups, users, sessions)
    )


#: Publish latency in this process (a Django web worker), in prometheus-client's default registry:
#: the site exports it with the rest of its metrics (see docs/operations.md, "Metrics and health").
PUBLISH_SECONDS = Histogram(
    "ws4redis_publish_seconds",
    "Time a publish_message took to reach Redis (failed ones included).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


class RedisStore:
    """Publishes to, and reads persisted messages from, a set of channels."""

    def __init__(self, connection: redis.Redis) -> None:
        self._connection = connection
        self._publishers: Sequence[str] = ()
        # The audiences behind ``_publishers`` (facility and names, SELF resolved), for ws4redis_uwsgi.testing.
        self._audience_names: dict[str, Any] | None = None
        # Set by a websocket connection so that it can recognise its own messages.
        self._origin: str | None = None
        #: The id of the last message published (of its copy on the first channel), when history is on.
        self.last_message_id: str | None = None

    @staticmethod
    def get_prefix() -> str:
        return prefix_string(settings.get("WS4REDIS_PREFIX"))

    def _get_message_channels(
        self,
        request: Any = None,
        facility: str = "",
        broadcast: bool = False,
        groups: Any = (),
        users: Any = (),
        sessions: Any = (),
        *,
        own: Identity | None = None,
    ) -> list[str]:
        audiences = self._audience_names = self._audiences(request, facility, broadcast, groups, users, sessions, own=own)
        return named_channels(settings.get("WS4REDIS_PREFIX"), **audiences, sharded=sharded())

    @staticmethod
    def _audiences(
        request: Any = None,
        facility: str = "",
        broadcast: bool = False,
        groups: Any = (),
        users: Any = (),
        sessions: Any = (),
        *,
        own: Identity | None = None,
    ) -> dict[str, Any]:
        """The audiences as :func:`~ws4redis_uwsgi.core.channels.named_channels` takes them, ``SELF`` resolved.

        ``SELF`` stands for ``own`` when given, else for what the request says
        (read from Django now, :func:`needs_identity`).
        """
        try:
            validate_facility(facility)
        except HandshakeError as exc:
            raise ValueError(f"invalid facility {facility!r}: {exc}") from None
        if own is None:
            own = Identity()
            if needs_identity(request, groups, users, sessions):
                from ..django.identity import identity_from_request

                own = identity_from_request(request)
        return {
            "facility": facility,
            "broadcast": broadcast is True,
            "users": _names(users, [own.username] if own.username else [], "users"),
            "groups": _names(groups, own.groups, "groups"),
            "sessions": _names(sessions, [own.session_key] if own.session_key else [], "sessions"),
        }

    def publish_message(self, message: RedisMessage | str | bytes, expire: int | None = None, binary: bool = False) -> int:
        """Publish ``message`` to this store's channels and persist it for ``expire`` seconds.

        PUBLISH (SPUBLISH on a Cluster) and SET-with-expiry for every channel
        go to Redis in one round trip per shard, at once for each channel (a
        script: a websocket subscribing meanwhile gets the message either
        live or as the stored one); with history on
        (``WS4REDIS_HISTORY_LENGTH``/``_SECONDS``) the same round trip assigns
        each channel's copy its id (the first kept in ``last_message_id``)
        and appends it to the channel's history. ``expire`` defaults to ``WS4REDIS_EXPIRE``; ``0`` persists nothing
        and leaves an earlier persisted message alone. ``binary=True`` makes
        the message arrive as a binary frame even when it is valid UTF-8.

        :returns: the number of receivers Redis reported, summed over the
            channels (a receiver is a subscribed server process, not a browser).
        :raises NotReplicatedError: fewer replicas than ``WS4REDIS_WAIT_REPLICAS``
            acknowledged it in time (history on or off).
        :raises redis.RedisError: when Redis cannot be reached within the
            connection's timeouts.
        """
        started = time.perf_counter()
        try:
            return self._publish(message, expire, binary, None)
        finally:
            PUBLISH_SECONDS.observe(time.perf_counter() - started)

    def _publish(self, message: RedisMessage | str | bytes, expire: int | None, binary: bool, uid: str | None) -> int:
        """:meth:`publish_message`, every copy carrying ``uid`` when given (the durable outbox's, history on or off)."""
        outgoing = self._outgoing(message, expire, binary, uid)
        if outgoing is None:
            return 0
        calls = outgoing.calls(self._connection)
        message_id, receivers = outgoing.result(calls, scripts.run(self._connection, calls))
        if message_id is not None:
            self.last_message_id = message_id
        return receivers

    def _outgoing(
        self, message: RedisMessage | str | bytes, expire: int | None, binary: bool, uid: str | None
    ) -> WithHistory | WithoutHistory | None:
        """What a publish sends, wrapped (no I/O; the sync and the async publishers send it): None for nothing."""
        data = message if isinstance(message, RedisMessage) else RedisMessage(message)
        if data is None or not self._publishers:
            return None
        if expire is None:
            expire = settings.get("WS4REDIS_EXPIRE")
        expire = max(int(expire or 0), 0)
        channels = tuple(self._publishers)
        if history.enabled():
            # A message on several channels carries a uid: a client on more than one gets it once
            # (without history there are no ids, and no repeats are held back).
            if uid is None and len(channels) > 1:
                uid = envelope.new_uid()
            head, tail = envelope.encode_parts(bytes(data), binary=binary, origin=self._origin, uid=uid)
            return WithHistory(channels, expire, head, tail)
        return WithoutHistory(channels, expire, envelope.encode(bytes(data), binary=binary, origin=self._origin, uid=uid))


@dataclass(frozen=True)
class WithHistory:
    """A publish with history on: the message around its id, which the publish script assigns (:mod:`.history`)."""

    channels: tuple[str, ...]
    expire: int
    head: bytes
    tail: bytes

    def calls(self, client: Any) -> scripts.ScriptCalls:
        """The calls of the history's publish script (no I/O)."""
        return history.script_calls(client, self.channels, self.head, self.tail, self.expire)

    @staticmethod
    def result(calls: scripts.ScriptCalls, replies: Sequence[Any]) -> tuple[str | None, int]:
        """(the id of the first copy, the receivers Redis reported) from the replies of :meth:`calls`."""
        return history.publish_result(calls, replies)


# KEYS: the channels (one slot on a Cluster). ARGV: the message, the seconds it stays
# stored (0: not stored, an earlier stored message left alone), the command that publishes
# (PUBLISH, or SPUBLISH on a Cluster). Returns the receivers. Stored and published at once:
# a websocket that subscribes, then reads the stored message, finds either the one before
# and gets this one live, or this one. Published first and stored after, a read between
# the two would find the one before while this one went out before the subscription:
# that websocket would never get it (a big message makes Redis read the SET in pieces,
# serving other clients in between).
STORE_AND_PUBLISH = scripts.Script("""
local expire = tonumber(ARGV[2])
local receivers = 0
for i = 1, #KEYS do
  if expire > 0 then
    redis.call('SET', KEYS[i], ARGV[1], 'EX', expire)
  end
  receivers = receivers + redis.call(ARGV[3], KEYS[i], ARGV[1])
end
return receivers
""")


@dataclass(frozen=True)
class WithoutHistory:
    """A publish with history off: stored (for ``expire`` seconds) and published per channel in one script per slot."""

    channels: tuple[str, ...]
    expire: int
    payload: bytes

    def calls(self, client: Any) -> scripts.ScriptCalls:
        """The calls of :data:`STORE_AND_PUBLISH` (no I/O)."""
        args: list[bytes | int | str] = [self.payload, self.expire, "SPUBLISH" if is_cluster(client) else "PUBLISH"]
        return scripts.calls(STORE_AND_PUBLISH, self.channels, scripts.shard_groups(client, self.channels), args)

    @staticmethod
    def result(calls: scripts.ScriptCalls, replies: Sequence[Any]) -> tuple[str | None, int]:
        """(None: no id without history, the receivers Redis reported) from the replies of :meth:`calls`."""
        return None, sum(int(reply) for reply in replies)
