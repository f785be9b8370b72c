"""Channel names, audiences and the websocket query string: pure functions.

A channel (and the key of its persisted message) is named, with ``p`` the
prefix followed by ``:`` when one is set::

    {p}broadcast:{facility}
    {p}user:{username}:{facility}
    {p}group:{groupname}:{facility}
    {p}session:{session_key}:{facility}

With Redis Cluster (``sharded``) the part after the prefix is a hash tag,
``{p}{broadcast:{facility}}`` and so on: a channel, its persisted message
and its history then live on one shard, and different channels spread over
all shards.

Nothing here touches Redis, Django or sockets, so every decision is tested
with plain values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl

from .exceptions import HandshakeError
from .positions import decode_token

#: Longest facility accepted; longer paths are refused before the upgrade.
MAX_FACILITY_LENGTH = 200

# ':' would let a facility reach into another audience's channel name,
# '*', '?', '[' are glob characters (PSUBSCRIBE, KEYS), and whitespace or
# control characters have no business in a channel name.
_FORBIDDEN_IN_FACILITY = re.compile(r"[:*?\[\]\s\x00-\x1f\x7f-\x9f]")


class Audience(StrEnum):
    """Who a channel reaches; the value is the word used in names and queries."""

    BROADCAST = "broadcast"
    USER = "user"
    GROUP = "group"
    SESSION = "session"


def validate_facility(facility: str) -> str:
    """Return ``facility`` if it is safe to embed in a channel name, else raise.

    :raises HandshakeError: with a short reason, sent back as HTTP 400.
    """
    if not facility:
        raise HandshakeError("missing facility")
    if len(facility) > MAX_FACILITY_LENGTH:
        raise HandshakeError("facility too long")
    if _FORBIDDEN_IN_FACILITY.search(facility):
        raise HandshakeError("facility contains a forbidden character")
    return facility


def facility_from_path(path_info: str, websocket_url: str) -> str:
    """Extract and validate the facility from a WSGI ``PATH_INFO``.

    WSGI servers hand the raw path bytes over as latin-1 text; the facility
    must be valid UTF-8 once those bytes are recovered.
    """
    if not path_info.startswith(websocket_url):
        raise HandshakeError("not under the websocket URL")
    raw = path_info[len(websocket_url) :]
    try:
        facility = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise HandshakeError("facility is not valid UTF-8") from None
    return validate_facility(facility)


def facility_of_request(path_info: str, websocket_url: str) -> str:
    """The facility of a request whose path Django already decoded (``request.path_info``).

    :func:`facility_from_path` reads the raw WSGI ``PATH_INFO`` (latin-1
    text) and the handshake calls it before anything else, so a request's
    decoded path needs only its prefix cut off; decoding it again would
    refuse every facility outside ASCII.
    """
    return path_info[len(websocket_url) :]


def prefix_string(prefix: str | None) -> str:
    """The text put in front of every channel name: ``'prefix:'`` or ``''``."""
    return f"{prefix}:" if prefix else ""


def channel_name(prefix: str | None, audience: Audience, facility: str, name: str | None = None, *, sharded: bool = False) -> str:
    """Name of the channel (and persisted key) of one audience member on ``facility``.

    ``sharded`` (Redis Cluster) puts everything after the prefix in a hash tag.
    """
    if audience is Audience.BROADCAST:
        base = f"broadcast:{facility}"
    elif not name:
        raise ValueError(f"a {audience.value} channel needs a name")
    else:
        base = f"{audience.value}:{name}:{facility}"
    return f"{prefix_string(prefix)}{{{base}}}" if sharded else f"{prefix_string(prefix)}{base}"


@dataclass(frozen=True)
class Identity:
    """Who is on the other end of a websocket, as far as channels care.

    ``username`` is ``None`` for anonymous users: they get no user or group
    audience. ``groups`` are the user's group names when the socket opened.
    """

    username: str | None = None
    groups: tuple[str, ...] = ()
    session_key: str | None = None


def audience_channels(
    prefix: str | None, facility: str, audiences: Iterable[Audience], identity: Identity, *, sharded: bool = False
) -> list[str]:
    """Channels that ``identity`` reaches on ``facility`` for the given audiences.

    An audience the identity cannot take (user or group for an anonymous
    user, session without a session) yields no channel.
    """
    channels: list[str] = []
    for audience in sorted(set(audiences), key=_AUDIENCE_ORDER.index):
        if audience is Audience.BROADCAST:
            channels.append(channel_name(prefix, audience, facility, sharded=sharded))
        elif audience is Audience.USER and identity.username:
            channels.append(channel_name(prefix, audience, facility, identity.username, sharded=sharded))
        elif audience is Audience.GROUP and identity.username:
            channels.extend(channel_name(prefix, audience, facility, g, sharded=sharded) for g in identity.groups)
        elif audience is Audience.SESSION and identity.session_key:
            channels.append(channel_name(prefix, audience, facility, identity.session_key, sharded=sharded))
    return channels


def named_channels(
    prefix: str | None,
    facility: str,
    *,
    broadcast: bool = False,
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
    sessions: Iterable[str] = (),
    sharded: bool = False,
) -> list[str]:
    """Channels of explicitly named recipients, as a publisher addresses them."""
    channels = [channel_name(prefix, Audience.BROADCAST, facility, sharded=sharded)] if broadcast else []
    for audience, names in ((Audience.USER, users), (Audience.GROUP, groups), (Audience.SESSION, sessions)):
        channels.extend(channel_name(prefix, audience, facility, n, sharded=sharded) for n in sorted(set(names)) if n)
    return channels


# Session first: ws4redis' fetch_message looks for the most specific message first.
_AUDIENCE_ORDER = [Audience.SESSION, Audience.USER, Audience.GROUP, Audience.BROADCAST]

#: Query parameters a client uses to choose its audiences, as in ws4redis.
SUBSCRIBE_PARAMS = tuple(f"subscribe-{a.value}" for a in Audience)
PUBLISH_PARAMS = tuple(f"publish-{a.value}" for a in Audience)


@dataclass(frozen=True)
class ClientRequest:
    """What a client asked for in its websocket URL's query string."""

    channels: tuple[str, ...] = ()  # e.g. ('subscribe-broadcast', 'publish-user')
    echo: bool = False
    #: None: a plain ws4redis client; "": wants resume tokens; a token: resume after it.
    resume: str | None = None
    #: Wants presence events (``!join``/``!leave`` notices): its messages come framed, as with ``resume``.
    presence: bool = False

    @property
    def framing(self) -> str | None:
        """The ``resume`` the outbox works with: presence events need framed messages, tokens from now on."""
        return "" if self.presence and self.resume is None else self.resume

    @property
    def subscribe(self) -> frozenset[Audience]:
        return frozenset(Audience(c.split("-", 1)[1]) for c in self.channels if c.startswith("subscribe-"))

    @property
    def publish(self) -> frozenset[Audience]:
        return frozenset(Audience(c.split("-", 1)[1]) for c in self.channels if c.startswith("publish-"))


@functools.lru_cache(maxsize=256)  # a handshake parses its query three times; pages mostly share theirs
def parse_query(query_string: str) -> ClientRequest:
    """Parse ``subscribe-*``, ``publish-*``, ``echo``, ``resume`` and ``presence`` from a query string.

    Parameter names are matched case-insensitively, ignoring surrounding
    blanks, as ws4redis did; unknown parameters are ignored so that pages may
    add their own (cache busters, resume ids).
    """
    wanted: list[str] = []
    echo = False
    presence = False
    resume = None
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        param = name.strip().lower()
        if param in SUBSCRIBE_PARAMS or param in PUBLISH_PARAMS:
            if param not in wanted:
                wanted.append(param)
        elif param == "echo":
            echo = True
        elif param == "presence":
            presence = True
        elif param == "resume":
            resume = value.strip()
            if resume:
                try:
                    decode_token(resume)
                except ValueError:
                    raise HandshakeError("invalid resume token") from None
    return ClientRequest(tuple(wanted), echo, resume, presence)


def restrict(request: ClientRequest, allowed: Iterable[str]) -> ClientRequest:
    """Keep only the channel parameters that an allowed-channels hook returned."""
    permitted = set(allowed)
    return ClientRequest(tuple(c for c in request.channels if c in permitted), request.echo, request.resume, request.presence)
