"""Messages and the store that publishes them, as in ``ws4redis.redis_store``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from .. import settings
from ..core import envelope
from ..core.channels import Identity, named_channels, prefix_string, validate_facility
from ..core.exceptions import HandshakeError
from . import history
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


class RedisStore:
    """Publishes to, and reads persisted messages from, a set of channels."""

    def __init__(self, connection: redis.Redis) -> None:
        self._connection = connection
        self._publishers: list[str] = []
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
    ) -> list[str]:
        audiences = self._audience_names = self._audiences(request, facility, broadcast, groups, users, sessions)
        return named_channels(settings.get("WS4REDIS_PREFIX"), **audiences, sharded=sharded())

    @staticmethod
    def _audiences(
        request: Any = None,
        facility: str = "",
        broadcast: bool = False,
        groups: Any = (),
        users: Any = (),
        sessions: Any = (),
    ) -> dict[str, Any]:
        """The audiences as :func:`~ws4redis_uwsgi.core.channels.named_channels` takes them, ``SELF`` resolved."""
        try:
            validate_facility(facility)
        except HandshakeError as exc:
            raise ValueError(f"invalid facility {facility!r}: {exc}") from None
        own = Identity()
        if request is not None and any(
            v is True or (isinstance(v, (list, tuple, set, frozenset)) and SELF in v) for v in (groups, users, sessions)
        ):
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
        go to Redis in one round trip per shard; with history on
        (``WS4REDIS_HISTORY_LENGTH``/``_SECONDS``) the same round trip assigns
        each channel's copy its id (the first kept in ``last_message_id``)
        and appends it to the channel's history. ``expire`` defaults to ``WS4REDIS_EXPIRE``; ``0`` persists nothing
        and leaves an earlier persisted message alone. ``binary=True`` makes
        the message arrive as a binary frame even when it is valid UTF-8.

        :returns: the number of receivers Redis reported, summed over the
            channels (a receiver is a subscribed server process, not a browser).
        :raises redis.RedisError: when Redis cannot be reached within the
            connection's timeouts.
        """
        return self._publish(message, expire, binary, None)

    def _publish(self, message: RedisMessage | str | bytes, expire: int | None, binary: bool, uid: str | None) -> int:
        """:meth:`publish_message`, every copy carrying ``uid`` when given (the durable outbox's, history on or off)."""
        data = message if isinstance(message, RedisMessage) else RedisMessage(message)
        if data is None or not self._publishers:
            return 0
        if expire is None:
            expire = settings.get("WS4REDIS_EXPIRE")
        if history.enabled():
            # A message on several channels carries a uid: a client on more than one gets it once
            # (without history there are no ids, and no repeats are held back).
            if uid is None and len(self._publishers) > 1:
                uid = envelope.new_uid()
            head, tail = envelope.encode_parts(bytes(data), binary=binary, origin=self._origin, uid=uid)
            self.last_message_id, receivers = history.publish(self._connection, self._publishers, head, tail, expire)
            return receivers
        payload = envelope.encode(bytes(data), binary=binary, origin=self._origin, uid=uid)
        command = "SPUBLISH" if is_cluster(self._connection) else "PUBLISH"
        pipe = self._connection.pipeline(transaction=False)
        for channel in self._publishers:
            pipe.execute_command(command, channel, payload)
            if expire and expire > 0:
                pipe.set(channel, payload, ex=int(expire))
        replies = pipe.execute()
        step = 2 if expire and expire > 0 else 1
        return sum(int(n) for n in replies[::step])
