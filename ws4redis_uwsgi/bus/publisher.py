"""Publishing from Django views, as ``ws4redis.publisher``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
from django.db import DEFAULT_DB_ALIAS, transaction

from .. import settings
from ..core import envelope
from ..core.channels import Audience, Identity, audience_channels
from . import async_publish
from . import durable as outbox
from .async_client import get_async_client
from .connection import get_client, mget, sharded
from .store import PUBLISH_SECONDS, RedisMessage, RedisStore, needs_identity

logger = logging.getLogger("ws4redis_uwsgi")

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
        # What a durable publish writes in its outbox row (SELF resolved then).
        self._targets: dict[str, Any] | None = None
        # Made in async code with SELF: Django's sync APIs may not run there, so
        # apublish_message resolves SELF through Django's async ones.
        self._self_pending = False
        if "facility" in kwargs:
            self._targets = kwargs
            if needs_identity(**kwargs) and _in_event_loop():
                self._audiences(**{**kwargs, "own": Identity()})  # a bad facility or argument raises now
                self._self_pending = True
            else:
                self._publishers = self._get_message_channels(**kwargs)

    def publish_message(  # type: ignore[override]
        self,
        message: RedisMessage | str | bytes,
        expire: int | None = None,
        binary: bool = False,
        *,
        on_commit: bool | None = None,
        using: str | None = None,
        durable: bool | None = None,
    ) -> int | None:
        """Publish ``message`` (see :meth:`RedisStore.publish_message`), after the commit when asked.

        With ``on_commit=True`` (default: ``WS4REDIS_PUBLISH_ON_COMMIT``),
        inside ``transaction.atomic()`` on the database ``using`` (default:
        Django's default database) the message goes out once the outermost
        block commits, and never if it rolls back; this returns None then.
        Outside a transaction it goes out at once, as without ``on_commit``,
        and returns the receivers. A publish that fails after the commit
        cannot raise into the view any more: it is logged, and lost.

        With ``durable=True`` (default: ``WS4REDIS_DURABLE_OUTBOX``, unless
        ``on_commit=False``) the message goes through the durable outbox
        (:mod:`~ws4redis_uwsgi.bus.durable`): inside a transaction a row is
        written in it and the message goes out after the commit (None is
        returned); outside one it goes out at once and the receivers are
        returned. Either way, a publish that fails (the process killed after
        the commit, Redis away) is not lost: a drain publishes the row later
        (None is returned outside a transaction then, with a log line).
        """
        if self._self_pending:  # made in async code, published from sync code
            assert self._targets is not None
            self._publishers = self._get_message_channels(**self._targets)
            self._self_pending = False
        if durable is None:
            durable = on_commit is not False and bool(settings.get("WS4REDIS_DURABLE_OUTBOX"))
        elif durable and on_commit is False:
            raise ValueError("durable=True publishes after the commit: it cannot go with on_commit=False")
        if durable:
            return self._publish_durable(message, expire, binary, using or DEFAULT_DB_ALIAS)
        if on_commit is None:
            on_commit = bool(settings.get("WS4REDIS_PUBLISH_ON_COMMIT"))
        if not on_commit or not transaction.get_connection(using).in_atomic_block:
            return super().publish_message(message, expire, binary)
        data = message if isinstance(message, RedisMessage) else RedisMessage(message)  # a bad message raises now
        transaction.on_commit(lambda: self._publish_after_commit(data, expire, binary), using=using)
        return None

    async def apublish_message(
        self,
        message: RedisMessage | str | bytes,
        expire: int | None = None,
        binary: bool = False,
        *,
        on_commit: bool | None = None,
        using: str | None = None,
        durable: bool | None = None,
    ) -> int:
        """:meth:`publish_message` for async code, on redis.asyncio, at once: ``await publisher.apublish_message(...)``.

        The same channels, history ids, ``WAIT`` acknowledgement
        (:class:`~.scripts.NotReplicatedError`) and return value (the
        receivers) as :meth:`publish_message`, on the running event loop's own
        client (:mod:`.async_client`), without a thread. ``SELF`` is read
        through Django's async APIs (:func:`~ws4redis_uwsgi.django.identity.aidentity_from_request`).

        Async code holds no transaction (Django's ``transaction.atomic`` is
        sync only), so the message always goes out at once:
        ``WS4REDIS_PUBLISH_ON_COMMIT`` changes nothing here (outside a
        transaction on-commit publishing is at once too), and ``using`` only
        stands for symmetry. ``on_commit=True`` and ``durable=True`` (or
        ``WS4REDIS_DURABLE_OUTBOX`` without ``on_commit=False`` or
        ``durable=False``) raise ValueError: call :meth:`publish_message`
        from the sync function that opens the transaction, and await that
        function through ``sync_to_async``.
        """
        if on_commit or durable:
            what = "on_commit=True" if on_commit else "durable=True"
        elif durable is None and on_commit is None and settings.get("WS4REDIS_DURABLE_OUTBOX"):
            what = "the durable outbox (WS4REDIS_DURABLE_OUTBOX)"
        else:
            what = ""
        if what:
            raise ValueError(
                f"apublish_message publishes at once, it cannot do {what} (transactions and the outbox are sync): "
                "call publish_message(..., on_commit=True) in the sync function that opens the transaction and "
                "await it with sync_to_async, or pass durable=False to publish at once without the outbox"
            )
        if self._self_pending:
            from ..django.identity import aidentity_from_request

            assert self._targets is not None
            own = await aidentity_from_request(self._targets["request"])
            self._publishers = self._get_message_channels(**self._targets, own=own)
            self._self_pending = False
        started = time.perf_counter()
        try:
            return await self._apublish(message, expire, binary, None)
        finally:
            PUBLISH_SECONDS.observe(time.perf_counter() - started)  # as publish_message's, SELF read before

    async def _apublish(self, message: RedisMessage | str | bytes, expire: int | None, binary: bool, uid: str | None) -> int:
        """The async twin of ``RedisStore._publish``: the one place every async publish goes through (the testing kit's too)."""
        outgoing = self._outgoing(message, expire, binary, uid)
        if outgoing is None:
            return 0
        message_id, receivers = await async_publish.publish(await get_async_client(), outgoing)
        if message_id is not None:
            self.last_message_id = message_id
        return receivers

    def _publish_durable(self, message: RedisMessage | str | bytes, expire: int | None, binary: bool, using: str) -> int | None:
        outbox.check_database(using)
        if self._targets is None:
            raise ValueError("durable publishing needs a publisher made with facility=...")
        data = message if isinstance(message, RedisMessage) else RedisMessage(message)  # a bad message raises now
        if data is None or not self._publishers:
            return 0
        audiences = self._audiences(**self._targets)
        if expire is None:
            expire = settings.get("WS4REDIS_EXPIRE")
        row = outbox.write(using, audiences, bytes(data), binary, max(int(expire or 0), 0))
        if transaction.get_connection(using).in_atomic_block:
            transaction.on_commit(lambda: outbox.publish_committed(self, row, using), using=using)
            return None
        return outbox.publish_committed(self, row, using)

    def _publish_after_commit(self, data: RedisMessage | None, expire: int | None, binary: bool) -> None:
        try:
            super().publish_message(data, expire, binary)  # type: ignore[arg-type]
        except redis.RedisError as exc:
            logger.error("message for %s not published after the commit: %s", ", ".join(self._publishers), exc)

    def fetch_message(self, request: Any, facility: str, audience: str = "any") -> RedisMessage | None:
        """The message still persisted for ``request`` on ``facility``, or ``None``.

        ``audience`` is ``'session'``, ``'user'``, ``'group'``, ``'broadcast'``
        or ``'any'`` (the most specific persisted message wins, in that order).
        """
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


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop (where Django refuses its sync database APIs)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
