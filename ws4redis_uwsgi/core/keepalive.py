"""When to ping a client, and when one that does not answer is gone: uWSGI's rule, pure, time passed in.

A ping goes out ``ping_freq`` seconds after the handshake and after each
previous ping; a ping unanswered for more than ``pong_tolerance`` seconds
means the client is gone (uWSGI's ``websocket-ping-freq`` and
``websocket-pong-tolerance``). Every adapter that pings applies it.
"""

from __future__ import annotations

from enum import Enum


class KeepAlive(Enum):
    """What a websocket's keep-alive calls for now."""

    NOTHING = "nothing"
    PING = "ping"
    GONE = "gone"


def keep_alive(now: float, last_ping: float, awaiting_pong: bool, ping_freq: float, pong_tolerance: float) -> KeepAlive:
    """The decision at ``now`` for a websocket last pinged (or opened) at ``last_ping``."""
    if awaiting_pong:
        return KeepAlive.GONE if now - last_ping > pong_tolerance else KeepAlive.NOTHING
    return KeepAlive.PING if now - last_ping >= ping_freq else KeepAlive.NOTHING
