"""The per-websocket subscriber, as ``ws4redis.subscriber.RedisSubscriber``.

Unlike ws4redis, a subscriber holds no Redis connection of its own: it
registers with the worker's :class:`~ws4redis_uwsgi.bus.hub.SubscriptionHub`, and
its :class:`~ws4redis_uwsgi.core.outbox.Outbox` decides what the websocket gets. Replace it with
``WS4REDIS_SUBSCRIBER`` to add channels: override
:meth:`RedisSubscriber.set_pubsub_channels` and call :meth:`subscribe`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from .. import settings
from ..core import envelope
from ..core.channels import Audience, ClientRequest, Identity, audience_channels, facility_of_request
from ..core.outbox import Outbox
from ..core.positions import Order
from ..django.identity import identity_from_request, read_at
from ..django.tokens import session_ref
from . import history, resources
from .connection import mget, sharded
from .fanout import copied_in_c
from .presence import Membership
from .store import RedisStore

#: How long a handshake waits for Redis to confirm the new subscriptions
#: before it completes anyway (Redis may be down; the hub subscribes later).
SUBSCRIBE_TIMEOUT = 3.0
#: How long a handshake with a stored message without id waits for the hub to hand out what Redis sent
#: before it (SubscriptionHub.settle): one PING's round trip on the hub's connection, unless Redis is away.
SETTLE_TIMEOUT = 1.0


class DirectWriter(Protocol):
    """A websocket's socket as the hub writes to it (:class:`~ws4redis_uwsgi.server.sockets.RawSocket`)."""

    def try_write(self, frame: bytes) -> bool:
        """Write a whole frame now; False when that is not possible without waiting."""

    def give_up(self) -> None:
        """The client fell too far behind: a write to it that waits fails now (it could only close it afterwards)."""


@dataclass(slots=True)
class Grant:
    """Who a websocket was let in as, for live authorization (:mod:`ws4redis_uwsgi.server.authority`)."""

    user_pk: str
    username: str
    #: The session key of the cookie it came with (None: a token).
    session_key: str | None
    #: The reference of its session (:func:`~ws4redis_uwsgi.django.tokens.session_ref`), if any.
    ref: str | None
    #: What the client asked for, and the user's groups then: its audience channels follow them.
    wanted: ClientRequest
    groups: tuple[str, ...]
    #: A token's part of the user's session auth hash (None: a cookie session).
    token_hash: str | None = None
    #: The audience channels it subscribed (channels a site's subscriber adds are left alone).
    channels: tuple[str, ...] = ()
    #: When its session and user were last read from the database (``time.monotonic()``): the periodic re-check's clock.
    read_at: float = 0.0


class RedisSubscriber(RedisStore):
    """Subscribes one websocket to its channels and lets it publish to its own.

    What the websocket is owed, and in which order, is its :attr:`outbox`'s
    business; the subscriber feeds it (live messages from the hub, stored
    messages, history pages) and wakes the websocket's loop.
    """

    #: Who the websocket was let in as (None: anonymous, or a subscriber that set no grant).
    grant: Grant | None = None
    #: Set by :meth:`end_session`: its session ended, the loop closes it with 4001.
    session_ended = False
    #: This websocket's presence on its facility, if the facility has presence (set by the server).
    presence: Membership | None = None

    subscription_channels = ["subscribe-session", "subscribe-group", "subscribe-user", "subscribe-broadcast"]
    publish_channels = ["publish-session", "publish-group", "publish-user", "publish-broadcast"]

    def __init__(self, connection: redis.Redis | None = None) -> None:
        super().__init__(connection if connection is not None else resources.command_client())
        self._hub = resources.get_hub()
        # Tuples, not lists, here and in the grant: a tuple of strings is no object the garbage
        # collector walks, and a worker holds one per websocket for as long as it is open.
        self._channels: tuple[str, ...] = ()
        self._origin = resources.new_origin()
        #: The facility and the user's name, once set_pubsub_channels() ran.
        self.facility: str | None = None
        self.username: str | None = None
        #: The delivery state of this websocket; :meth:`configure` sets it up for the client's query.
        self.outbox = self._new_outbox(echo=False, resume=None)
        #: Called when a message waits: wakes the websocket's loop (set by :meth:`attach`).
        self.notify: Callable[[], None] = _nothing
        # Set by enable_fast_path(): the socket the hub writes frames to at once. The socket, not its
        # try_write: a bound method would be one more object per websocket for the collector to walk.
        self._socket: DirectWriter | None = None

    def configure(self, *, echo: bool, resume: str | None) -> None:
        """What the client asked for: its own messages back (``echo``), message ids and a position (``resume``).

        ``resume`` is None for a plain ws4redis client, ``""`` for tokens from now on, or the token to resume after.
        """
        self.outbox = self._new_outbox(echo=echo, resume=resume)
        self.outbox.channels = self._channels

    def _new_outbox(self, *, echo: bool, resume: str | None) -> Outbox:
        return Outbox(
            origin=self._origin,
            echo=echo,
            with_ids=resume is not None,
            resume=resume or None,
            max_pending=settings.max_pending_messages(),
            arrived_ms=self._hub.redis_now_ms(),
        )

    def attach(self, wake: Callable[[], None]) -> None:
        """Wake the loop that serves this websocket with ``wake`` whenever a message waits or its state changed.

        The one way the server hands its loop to the subscriber, so that
        nothing outside sets :attr:`notify`; subclasses may still read it.
        """
        self.notify = wake

    def enable_fast_path(self, socket: DirectWriter) -> None:
        """Let the hub write live messages straight to ``socket``, and reset it when the client fell too far behind."""
        self._socket = socket

    def set_pubsub_channels(self, request: Any, channels: Iterable[str]) -> None:
        """Subscribe to, and publish on, the channels the client asked for.

        ``channels`` holds the query parameters that were agreed, such as
        ``'subscribe-broadcast'`` or ``'publish-user'``; the facility is the
        request path below ``WEBSOCKET_URL``.
        """
        facility = facility_of_request(request.path_info, settings.get("WEBSOCKET_URL"))
        self.facility = facility
        wanted = ClientRequest(tuple(channels))
        # The groups query only when a group channel is asked for.
        identity = identity_from_request(request, with_groups=Audience.GROUP in wanted.subscribe | wanted.publish)
        #: Who is on the other end (None: anonymous), for WS4REDIS_ON_GAP.
        self.username = identity.username
        self._publishers, channels = _audience_channels(facility, wanted, identity)
        user = getattr(request, "user", None)
        if identity.username is not None and user is not None:
            claims = getattr(request, "ws4redis_token", None)
            ref = session_ref(identity.session_key) if identity.session_key else None
            self.grant = Grant(
                user_pk=str(user.pk),
                username=identity.username,
                session_key=identity.session_key,
                ref=claims.session_ref if claims is not None else ref,
                wanted=wanted,
                groups=identity.groups,
                token_hash=claims.auth_hash if claims is not None else None,
                channels=channels,
                read_at=read_at(request),
            )
        self.subscribe(*channels)

    def reidentify(self, *, groups: tuple[str, ...] | None = None, session_key: str | None = None) -> None:
        """Follow a change of the user's groups, or of the session's key: subscribe and publish to the new channels.

        Channels of audiences that did not change stay subscribed; no message on them is lost or repeated.
        """
        grant = self.grant
        if grant is None or self.facility is None:
            return
        if groups is not None:
            grant.groups = groups
        if session_key is not None:
            grant.session_key = session_key
            grant.ref = session_ref(session_key)
        identity = Identity(grant.username, grant.groups, grant.session_key)
        self._publishers, new = _audience_channels(self.facility, grant.wanted, identity)
        gone = [c for c in grant.channels if c not in new]
        grant.channels = new
        if gone:
            self._hub.remove(self, gone)
            self._channels = tuple(c for c in self._channels if c not in gone)
            self.outbox.channels = self._channels
        self.subscribe(*new)

    def end_session(self) -> None:
        """The websocket's session ended: the loop closes it (4001) and writes nothing more.

        Live messages stop being written straight to the socket; what waits is never sent.
        """
        self.session_ended = True
        self._socket = None
        self.notify()

    def subscribe(self, *channels: str) -> None:
        """Add channels to this websocket's subscriptions."""
        new = tuple(dict.fromkeys(c for c in channels if c not in self._channels))
        self._channels += new
        self.outbox.channels = self._channels
        self._hub.add(self, new)

    @property
    def channels(self) -> tuple[str, ...]:
        return self._channels

    def wait_subscribed(self, timeout: float = SUBSCRIBE_TIMEOUT) -> bool:
        """Wait until Redis confirmed every subscription, so nothing published later is missed.

        On timeout (Redis away) the websocket opens anyway and owes a catch-up
        from history, which the hub asks for once the subscriptions are back.
        """
        if self._hub.wait_subscribed(self._channels, timeout):
            return True
        self.outbox.owe_catch_up()
        return False

    def subscribed(self) -> bool:
        """Whether Redis confirmed every subscription of this websocket on the hub's current connection."""
        return self._hub.confirmed(self._channels)

    def redis_now_ms(self) -> int:
        return self._hub.redis_now_ms()

    def send_persisted_messages(self, websocket: Any) -> None:
        """Send the message still persisted for each subscribed channel."""
        for message in self.persisted_messages():
            websocket.send(message.payload, binary=message.binary)

    def persisted_messages(self) -> Iterator[envelope.BusMessage]:
        """The message still persisted for each subscribed channel, not yet handed out, one at a time.

        Each is recorded as handed out when it is yielded (see :meth:`Outbox.fresh`).

        :raises redis.RedisError: when Redis cannot be read.
        """
        if not self._channels:
            return iter(())
        values: list[Any]
        if self._connection is resources.command_client():
            values = resources.batched_reader().mget(self._channels)  # one MGET for every handshake in progress
        else:
            values = mget(self._connection, self._channels)
        found = [m for m in (self._hub.accept(v, c) for c, v in zip(self._channels, values, strict=True) if v) if m is not None]
        bare = [m.channel for m in found if m.order is None and m.uid is None and m.channel is not None]
        if bare:
            # Without an id (history off) nothing but its live copy, by its content, tells a stored message
            # apart (Outbox.fresh): the read may have run after a publish whose live copy this worker has not
            # handed out yet. Once it has, the copy waits in the outbox, and the stored one is left out.
            self._hub.settle(bare, SETTLE_TIMEOUT)
        return self.outbox.fresh(found)

    def read_backlog(self, positions: Mapping[str, Order]) -> history.BacklogReader:
        """A reader of what was published on this websocket's channels after its ``positions``.

        Pass its pages through :meth:`fresh`.
        """
        brought = self.outbox.brought()
        if self._connection is resources.command_client():
            return history.BacklogReader(self._connection, positions, resources.batched_pipeline().run, brought=brought)
        return history.BacklogReader(self._connection, positions, brought=brought)

    def fresh(self, messages: Iterable[envelope.BusMessage]) -> Iterator[envelope.BusMessage]:
        """Those of ``messages`` (from history, in id order) this websocket is owed, recorded as handed out one at a time."""
        return self.outbox.fresh(m for m in messages if self._hub.trusted(m, "history"))

    def get_file_descriptor(self) -> int | None:
        """``None``: the worker's hub owns the Redis socket, not this subscriber."""
        return None

    @copied_in_c("deliver")
    def deliver(self, message: envelope.BusMessage) -> None:
        """Called by the hub for every message on one of this websocket's channels.

        The outbox writes it straight to the socket when nothing waits before
        it (one write of a frame built once per process, no wake-up of the
        websocket's loop); otherwise it waits and the loop is woken. Once more
        waits than the outbox holds, the loop closes the websocket; a write
        of the loop that waits for the client meanwhile is given up on at once.
        """
        socket = self._socket
        if not self.outbox.take_live(message, socket.try_write if socket is not None else None):
            self._hub.queued += 1
            if socket is not None and self.outbox.overflowed:
                socket.give_up()
            self.notify()

    def parse_response(self) -> envelope.BusMessage | None:
        """The next message to send to the websocket, or ``None`` when none waits (repeats skipped by id)."""
        return self.outbox.next()

    def resync(self) -> None:
        """Called by the hub once it subscribed again after losing Redis: catch up from history."""
        self.outbox.owe_catch_up()
        self.notify()

    def release(self) -> None:
        """Leave all channels; called when the websocket closes."""
        if self.presence is not None:
            self.presence.leave()
        self._hub.remove(self, self._channels, linger=True)  # the next page's websocket finds them subscribed
        self._channels = ()
        self.outbox.clear()
        # The loop's wake and the socket's writer refer back to the session that holds this
        # subscriber: let go of them, so that the websocket's objects are freed when it ends
        # rather than at a full garbage collection, which walks all of them until then.
        self.notify = _nothing
        self._socket = None


def _audience_channels(facility: str, wanted: ClientRequest, identity: Identity) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The channels ``identity`` publishes to and subscribes to on ``facility``, for what the client asked (``wanted``).

    Tuples (see :class:`RedisSubscriber`): they stay as long as the websocket.
    """
    prefix, tagged = settings.get("WS4REDIS_PREFIX"), sharded()
    publish = tuple(audience_channels(prefix, facility, wanted.publish, identity, sharded=tagged))
    subscribe = tuple(audience_channels(prefix, facility, wanted.subscribe, identity, sharded=tagged))
    return publish, subscribe


def _nothing() -> None:
    pass
