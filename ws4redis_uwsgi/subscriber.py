"""The per-websocket subscriber, as ``ws4redis.subscriber.RedisSubscriber``.

Unlike ws4redis, a subscriber holds no Redis connection of its own: it
registers with the worker's :class:`~ws4redis_uwsgi.hub.SubscriptionHub` and
receives messages into a bounded inbox. Replace it with
``WS4REDIS_SUBSCRIBER`` to add channels: override
:meth:`RedisSubscriber.set_pubsub_channels` and call :meth:`subscribe`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis

from . import envelope, history, hub, settings
from .channels import Audience, ClientRequest, audience_channels
from .identity import identity_from_request
from .redis_store import RedisStore

logger = logging.getLogger("ws4redis_uwsgi.subscriber")

#: How long a handshake waits for Redis to confirm the new subscriptions
#: before it completes anyway (Redis may be down; the hub subscribes later).
SUBSCRIBE_TIMEOUT = 3.0


class RedisSubscriber(RedisStore):
    """Subscribes one websocket to its channels and lets it publish to its own."""

    subscription_channels = ["subscribe-session", "subscribe-group", "subscribe-user", "subscribe-broadcast"]
    publish_channels = ["publish-session", "publish-group", "publish-user", "publish-broadcast"]

    def __init__(self, connection: redis.Redis | None = None) -> None:
        super().__init__(connection if connection is not None else hub.command_client())
        self._hub = hub.get_hub()
        self._channels: list[str] = []
        # Made when a message has to wait, dropped when drained: an empty deque holds a 0.6 KiB block.
        self._inbox: deque[envelope.BusMessage] | None = None
        self._origin = hub.new_origin()
        #: Whether this websocket receives the messages it published itself.
        self.echo = False
        #: Messages that may wait for this websocket before it counts as a slow consumer.
        self.max_pending: int = settings.get("WS4REDIS_MAX_PENDING_MESSAGES")
        #: Set when more than max_pending messages wait: the websocket is too slow.
        self.overflowed = False
        #: Called whenever a message arrives; the server sets it to wake its loop.
        self.notify: Callable[[], None] = lambda: None
        #: What the client asked with ``resume``: None (a plain ws4redis client), "" or an id.
        self.resume: str | None = None
        #: The id (as a comparable pair) of the newest message handed out, to drop repeats.
        self.last_order: tuple[int, int] | None = None
        #: Redis's clock (ms) when this websocket arrived: a catch-up from history
        #: before it handed out anything starts here (see :attr:`position`).
        self.arrived_ms = self._hub.redis_now_ms()
        #: Set when this websocket owes a catch-up from history: by the hub after it
        #: subscribed again, or when Redis could not be read as the websocket opened.
        #: Live messages queue behind it (no fast path) until it is done.
        self.resync_needed = False
        #: True while history is read for this websocket: live messages must queue behind it.
        self.backfilling = False
        #: Set by the server when its websocket can take a message at once: returns
        #: False when it cannot (busy, would block), and the message is queued.
        self.fast_send: Callable[[envelope.BusMessage], bool] | None = None

    def set_pubsub_channels(self, request: Any, channels: Iterable[str]) -> None:
        """Subscribe to, and publish on, the channels the client asked for.

        ``channels`` holds the query parameters that were agreed, such as
        ``'subscribe-broadcast'`` or ``'publish-user'``; the facility is the
        request path below ``WEBSOCKET_URL``.
        """
        facility = request.path_info[len(settings.get("WEBSOCKET_URL")) :]
        wanted = ClientRequest(tuple(channels))
        prefix = settings.get("WS4REDIS_PREFIX")
        # The groups query only when a group channel is asked for.
        identity = identity_from_request(request, with_groups=Audience.GROUP in wanted.subscribe | wanted.publish)
        self._publishers = audience_channels(prefix, facility, wanted.publish, identity)
        self.subscribe(*audience_channels(prefix, facility, wanted.subscribe, identity))

    def subscribe(self, *channels: str) -> None:
        """Add channels to this websocket's subscriptions."""
        new = [c for c in channels if c not in self._channels]
        self._channels.extend(new)
        self._hub.add(self, new)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._channels)

    def wait_subscribed(self, timeout: float = SUBSCRIBE_TIMEOUT) -> bool:
        """Wait until Redis confirmed every subscription, so nothing published later is missed."""
        return self._hub.wait_subscribed(self._channels, timeout)

    def send_persisted_messages(self, websocket: Any) -> None:
        """Send the message still persisted for each subscribed channel."""
        for message in self.persisted_messages():
            websocket.send(message.payload, binary=message.binary)

    def persisted_messages(self) -> list[envelope.BusMessage]:
        """The message still persisted for each subscribed channel, not yet handed out.

        :raises redis.RedisError: when Redis cannot be read.
        """
        if not self._channels:
            return []
        values: list[Any]
        if self._connection is hub.command_client():
            values = hub.batched_reader().mget(self._channels)  # one MGET for every handshake in progress
        else:
            values = self._connection.mget(self._channels)
        found = []
        for channel, value in zip(self._channels, values, strict=True):
            if value:
                try:
                    found.append(envelope.decode(value))
                except envelope.MalformedMessageError as exc:
                    logger.warning("stored message of %s skipped: %s", channel, exc)
        return self.new_messages(found)

    def read_backlog(self, since: str) -> history.BacklogReader:
        """A reader of what was published on this websocket's channels after message id ``since``.

        Pass its pages through :meth:`new_messages`.
        """
        return history.BacklogReader(self._connection, self._channels, since)

    def new_messages(self, messages: Iterable[envelope.BusMessage]) -> list[envelope.BusMessage]:
        """Those of ``messages`` (in id order) not yet handed out and with a trustworthy id; records the newest."""
        return [m for m in messages if self._is_new(m)]

    @property
    def last_id(self) -> str | None:
        return f"{self.last_order[0]}-{self.last_order[1]}" if self.last_order else None

    @property
    def position(self) -> str:
        """The id after which this websocket has been handed every message: where a catch-up from history starts.

        The last id handed out; before any, the id it resumed from; else the
        moment it arrived (ids follow Redis's clock), so that a websocket that
        opened while Redis was away gets what was published once it was back.
        """
        if self.last_order is not None:
            return f"{self.last_order[0]}-{self.last_order[1]}"
        if self.resume:
            return self.resume
        return f"{self.arrived_ms}-0"

    def trusts(self, message_id: str) -> bool:
        """Whether ``message_id`` (a client's ``resume``) could have been given out by this Redis: not far in the future."""
        return envelope.plausible_id(envelope.parse_id(message_id), self._hub.redis_now_ms())

    def subscribed(self) -> bool:
        """Whether Redis confirmed every subscription of this websocket on the hub's current connection."""
        return self._hub.confirmed(self._channels)

    def _is_new(self, message: envelope.BusMessage) -> bool:
        """False for a message with an id at or below the last one handed out, or far ahead of Redis's clock.

        Records the id of a new one.
        """
        order = message.order
        if order is None:
            return True
        if self.last_order is not None and order <= self.last_order:
            return False
        if not envelope.plausible_id(order, self._hub.redis_now_ms()):
            logger.warning("message with id %s dropped: far ahead of Redis's clock", message.id)
            return False
        self.last_order = order
        return True

    def get_file_descriptor(self) -> int | None:
        """``None``: the worker's hub owns the Redis socket, not this subscriber."""
        return None

    def deliver(self, message: envelope.BusMessage) -> None:
        """Called by the hub for every message on one of this websocket's channels.

        When nothing waits in the inbox, the websocket may take the message
        straight away (``fast_send``: one write of a frame built once per
        process, no wake-up of the websocket's greenlet); otherwise it queues.
        """
        if not self.echo and message.origin is not None and message.origin == self._origin:
            return
        if self.fast_send is not None and not (self._inbox or self.overflowed or self.resync_needed or self.backfilling):
            order = message.order
            if order is not None and self.last_order is not None and order <= self.last_order:
                return  # already sent
            if self.fast_send(message):
                if order is not None:
                    self.last_order = order
                return
        if self._inbox is None:
            self._inbox = deque()
        if len(self._inbox) >= self.max_pending:
            self.overflowed = True
        else:
            self._inbox.append(message)
        self.notify()

    def parse_response(self) -> envelope.BusMessage | None:
        """The next message to send to the websocket, or ``None`` when none waits.

        A message that already went out (through history, or on two of this
        websocket's channels) is skipped by its id.
        """
        while self._inbox:
            message = self._inbox.popleft()
            if self._is_new(message):
                return message
        self._inbox = None
        return None

    def resync(self) -> None:
        """Called by the hub once it subscribed again after losing Redis: catch up from history."""
        self.resync_needed = True
        self.notify()

    def release(self) -> None:
        """Leave all channels; called when the websocket closes."""
        self._hub.remove(self, self._channels)
        self._channels = []
        self._inbox = None
