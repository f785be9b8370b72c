"""Publishing from Django views, as ``ws4redis.publisher``."""

from __future__ import annotations

from typing import Any

from ..core import envelope
from ..core.channels import Audience, audience_channels
from .connection import get_client, mget, sharded
from .store import RedisMessage, RedisStore

_AUDIENCES = {
    "any": [Audience.SESSION, Audience.USER, Audience.GROUP, Audience.BROADCAST],
    "session": [Audience.SESSION],
    "user": [Audience.USER],
    "group": [Audience.GROUP],
    "broadcast": [Audience.BROADCAST],
}


class RedisPublisher(RedisStore):
    """Publishes messages from Django to websockets listening on ``facility``.

    ``RedisPublisher(facility='chat', broadcast=True)`` reaches everyone;
    ``users``, ``groups`` and ``sessions`` name recipients and may contain
    :data:`~ws4redis_uwsgi.bus.store.SELF` (with ``request``) for the
    requesting user's own name, groups or session.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(get_client())
        if "facility" in kwargs:
            self._publishers = self._get_message_channels(**kwargs)

    def fetch_message(self, request: Any, facility: str, audience: str = "any") -> RedisMessage | None:
        """The message still persisted for ``request`` on ``facility``, or ``None``.

        ``audience`` is ``'session'``, ``'user'``, ``'group'``, ``'broadcast'``
        or ``'any'`` (the most specific persisted message wins, in that order).
        """
        from .. import settings
        from ..django.identity import identity_from_request

        if audience not in _AUDIENCES:
            raise ValueError(f"audience must be one of {', '.join(_AUDIENCES)}")
        identity = identity_from_request(request)
        channels = audience_channels(settings.get("WS4REDIS_PREFIX"), facility, _AUDIENCES[audience], identity, sharded=sharded())
        if not channels:
            return None
        for value in mget(self._connection, channels):
            if value:
                return RedisMessage(envelope.decode(value).payload)
        return None
