"""The timeouts, limits and constants of the websocket side, read from settings and uWSGI's options in one place.

Every adapter (uWSGI in-request and detached websockets, the development
server) takes its limits from :func:`websocket_limits`, so they refuse,
ping and close alike. How far a websocket may fall behind
(:func:`ws4redis_uwsgi.settings.max_pending_messages`) is read in
:mod:`ws4redis_uwsgi.settings` instead: the subscriber (``bus``) needs it, and
``bus`` does not import ``server``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.signals import setting_changed

from .. import process, settings
from ..core.inbound import InboundPolicy, TokenBucket

try:
    import uwsgi
except ImportError:  # the development server, or imported outside uWSGI
    uwsgi = None

#: Seconds a send may wait for a client that reads nothing before it is reset as a slow consumer.
SEND_TIMEOUT = 30.0
#: Seconds the rest of a directly written frame may take before the client counts as gone.
PENDING_WRITE_TIMEOUT = 10.0
#: Seconds a close frame may take to go out.
CLOSE_TIMEOUT = 1.0
#: Seconds a closing websocket waits for the client to close its side.
CLOSE_LINGER = 2.0
#: Bytes a closing websocket reads and drops while it waits; a client that sends more is reset.
CLOSE_LINGER_BYTES = 4 * 1024 * 1024
#: Bytes read from a client's socket at once.
READ_SIZE = 65536
#: Frames one call to ``receive`` acts on at most (pings, pongs, parts of messages).
FRAMES_PER_CALL = 64
#: Messages from one client handled in one turn of its loop; then the other websockets get theirs.
MESSAGES_PER_TURN = 32
#: Seconds before a catch-up from history that Redis refused is tried again.
BACKLOG_RETRY = 1.0
#: Seconds a catch-up waits for the worker's backlog budget before the client is asked to come back (1013).
BACKLOG_WAIT = 10.0
#: Seconds between two rounds of keep-alive pings of the websockets a worker frames itself.
KEEPALIVE_ROUND = 5.0
#: Websockets a keep-alive round looks at before it lets the rest of the worker run: websockets that
#: opened together (a deploy's reconnect storm) are due together, 30 s later and every 30 s, and a
#: round that pinged 10,000 of them at a few µs each held every delivery of the worker meanwhile.
KEEPALIVE_BATCH = 256
#: uWSGI's defaults for ``websocket-max-size`` (KiB), ``websocket-ping-freq`` and ``websocket-pong-tolerance`` (s).
UWSGI_MAX_SIZE_KIB = 1024
UWSGI_PING_FREQ = 30.0
UWSGI_PONG_TOLERANCE = 3.0


@dataclass(frozen=True)
class WebsocketLimits:
    """What one websocket may send and how it is kept alive."""

    #: The largest message a client may send: WS4REDIS_MAX_MESSAGE_SIZE or uWSGI's websocket-max-size, the smaller.
    max_message_size: int
    #: Seconds between pings, and seconds a ping may go unanswered (uWSGI's options or their defaults).
    ping_freq: float
    pong_tolerance: float
    #: The kernel send buffer of each websocket (WS4REDIS_SEND_BUFFER), bytes; None: the kernel's.
    send_buffer: int | None


def websocket_limits() -> WebsocketLimits:
    """The limits as the settings and uWSGI's options say (outside uWSGI: uWSGI's defaults); read once per process."""
    return process.resource(_LIMITS, _read_limits)


_LIMITS = "websocket limits"


def _forget(**kwargs: Any) -> None:
    process.forget(_LIMITS)


setting_changed.connect(_forget, dispatch_uid="ws4redis_uwsgi.server.limits")


def _read_limits() -> WebsocketLimits:
    uwsgi_limit = int(uwsgi_number(UWSGI_MAX_SIZE_KIB, "websocket-max-size", "websockets-max-size") * 1024)
    limit = settings.get("WS4REDIS_MAX_MESSAGE_SIZE")
    return WebsocketLimits(
        max_message_size=min(uwsgi_limit, limit) if limit is not None else uwsgi_limit,
        ping_freq=uwsgi_number(UWSGI_PING_FREQ, "websocket-ping-freq", "websockets-ping-freq"),
        pong_tolerance=uwsgi_number(UWSGI_PONG_TOLERANCE, "websocket-pong-tolerance", "websockets-pong-tolerance"),
        send_buffer=settings.get("WS4REDIS_SEND_BUFFER"),
    )


def max_connections() -> int | None:
    """``WS4REDIS_MAX_CONNECTIONS``: websockets one process serves at most (None: as many as the adapter can hold)."""
    return settings.get("WS4REDIS_MAX_CONNECTIONS")


def max_channels() -> int:
    """``WS4REDIS_MAX_CHANNELS``: channels one websocket may subscribe; a handshake asking more is refused (403)."""
    return settings.get("WS4REDIS_MAX_CHANNELS")


def inbound_policy(now: float) -> InboundPolicy:
    """A client's inbound policy as the settings say (``WS4REDIS_HEARTBEAT``, ``_MAX_MESSAGE_SIZE``, ``_RATE_LIMIT``)."""
    rate = settings.get("WS4REDIS_RATE_LIMIT")
    return InboundPolicy(
        heartbeat=settings.get("WS4REDIS_HEARTBEAT"),
        max_size=settings.get("WS4REDIS_MAX_MESSAGE_SIZE"),
        bucket=TokenBucket(rate[0], rate[1], now) if rate else None,
    )


def uwsgi_option(*names: str) -> str | None:
    """The value of the first of ``names`` (aliases of one option) given to uWSGI, the last if repeated."""
    options = getattr(uwsgi, "opt", None) or {}
    for name in names:
        value = options.get(name)
        if isinstance(value, list):
            value = value[-1] if value else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value is not None:
            return str(value)
    return None


def uwsgi_number(default: float, *names: str) -> float:
    """An option of uWSGI as a number, ``default`` when it was not given or is not a number."""
    value = uwsgi_option(*names)
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
