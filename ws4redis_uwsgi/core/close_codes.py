"""WebSocket close codes sent by the server, in one place.

Every close the server initiates picks its code from :class:`CloseCode`; the
README documents each one. A server-side failure closes with
``INTERNAL_ERROR`` and never puts exception text on the wire.
"""

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
