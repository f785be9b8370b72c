"""WebSocket close codes sent by the server, in one place.

Every close the server initiates picks its code from :class:`CloseCode`; the
README documents each one. A server-side failure closes with
``INTERNAL_ERROR`` and never puts exception text on the wire.
"""

import re
from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    #: A text message that is not UTF-8 (RFC 6455 section 8.1).
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    #: The client fell more than WS4REDIS_MAX_PENDING_MESSAGES behind.
    SLOW_CONSUMER = 4000
    #: The websocket's session ended (logout, session deleted, password changed, user
    #: deactivated or deleted): ws4redis.js does not reconnect unless the page asks it to.
    SESSION_ENDED = 4001


#: The reasons sent with the codes wsproto gives when a client breaks RFC 6455 or a limit.
_VIOLATION_REASONS = {CloseCode.INVALID_PAYLOAD: "invalid UTF-8", CloseCode.MESSAGE_TOO_BIG: "message too big"}


def violation(code: int) -> tuple[CloseCode, str]:
    """The close code and reason for a client's violation that wsproto reported with ``code``."""
    known = CloseCode(code) if code in CloseCode._value2member_map_ else CloseCode.PROTOCOL_ERROR
    return known, _VIOLATION_REASONS.get(known, "protocol error")


def close_frame(code: CloseCode, reason: str = "") -> bytes:
    """Build an unmasked server close frame carrying ``code`` and a short ``reason``.

    The reason is truncated so the payload stays within the 125 bytes a
    control frame may carry.
    """
    # Cut on a character boundary: a close reason must be valid UTF-8.
    text = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    payload = int(code).to_bytes(2, "big") + text
    return bytes((0x88, len(payload))) + payload


#: The reason of a 1012 that tells the client to wait a while before it reconnects (ws4redis.js reads it).
_RETRY_HINT = re.compile(r"retry in (\d{1,6}) ms")


def restart_spread(websockets: int, rate: float | None) -> float:
    """Seconds over which the clients of ``websockets`` closing at once should spread their reconnections.

    Why: a worker that reloads closes all its websockets in a fraction of a
    second, and their clients' own backoff (250-500 ms for the first
    attempt) brings them back nearly together: more than the listen queue
    holds, and the kernel drops the rest of the SYNs, retried 1, 3 and 7 s
    later. Spread at ``rate`` handshakes per second (about what a worker
    takes), they come back as fast as it can serve them. 0 without a rate.
    """
    if not rate or websockets <= 0:
        return 0.0
    return websockets / rate


def restart_reason(delay: float) -> str:
    """The reason of a 1012 that asks the client to wait ``delay`` seconds more than its own backoff (at most 999.999)."""
    if delay <= 0:
        return "server restart"
    return f"server restart, retry in {min(round(delay * 1000), 999_999)} ms"


def retry_hint(reason: str) -> float | None:
    """The seconds a 1012's reason asks the client to wait (:func:`restart_reason`), or None."""
    found = _RETRY_HINT.search(reason)
    return int(found.group(1)) / 1000 if found else None
