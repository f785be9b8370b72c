"""Decisions about one websocket connection that need no I/O.

Handshake validation, the Origin check, heartbeat recognition and the
inbound rate limit live here so that every adapter (uWSGI, the development
server) decides the same way.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from django.http.request import validate_host

from .close_codes import CloseCode
from .exceptions import HandshakeError, OriginError, UpgradeRequiredError

#: The only websocket protocol version (RFC 6455) the server speaks.
WEBSOCKET_VERSION = "13"


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def check_upgrade_request(environ: Mapping[str, Any]) -> None:
    """Raise unless ``environ`` is a well-formed RFC 6455 upgrade request.

    :raises UpgradeRequiredError: a plain HTTP request (HTTP 426).
    :raises HandshakeError: a broken upgrade request (HTTP 400).
    """
    if "websocket" not in _tokens(environ.get("HTTP_UPGRADE", "")):
        raise UpgradeRequiredError("websocket upgrade required")
    if environ.get("REQUEST_METHOD", "GET") != "GET":
        raise HandshakeError("websocket upgrade must use GET")
    if environ.get("SERVER_PROTOCOL", "HTTP/1.1").upper() in ("HTTP/1.0", "HTTP/0.9"):
        # RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 request at least.
        raise HandshakeError("websocket upgrade needs HTTP/1.1")
    if "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        raise HandshakeError("Connection header lacks 'upgrade'")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != WEBSOCKET_VERSION:
        raise UpgradeRequiredError("unsupported websocket version")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeError("invalid Sec-WebSocket-Key")


def is_heartbeat(message: bytes, heartbeat: str | None) -> bool:
    """True when a received ``message`` is the configured heartbeat, which is answered, never published."""
    return heartbeat is not None and message == heartbeat.encode("utf-8")


def origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header value, lower-cased, port dropped; None if unparsable."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    # IPv6 literals keep their brackets, as in ALLOWED_HOSTS ('[::1]').
    return f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname


def check_origin(origin: str | None, allowed: Sequence[str], *, allow_missing: bool) -> None:
    """Refuse a cross-site websocket before the handshake.

    Browsers always send ``Origin``; comparing its host (port ignored) with
    the site's host patterns (``ALLOWED_HOSTS`` syntax: ``'.example.com'``,
    ``'*'``) closes cross-site websocket hijacking with cookie sessions.
    Clients that send no ``Origin`` are not browsers and pass only when
    ``allow_missing`` says so.

    :raises OriginError: with a short reason, sent back as HTTP 403.
    """
    if origin is None or origin == "":
        if allow_missing:
            return
        raise OriginError("Origin header required")
    host = origin_host(origin)
    if host is None or not validate_host(host, list(allowed)):
        raise OriginError("Origin not allowed")


class TokenBucket:
    """Allows ``rate`` events per second on average with bursts of ``burst``; pure, time passed in."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token at time ``now``; False when the bucket is empty."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Verdict(Enum):
    """What to do with one frame a client sent; closing verdicts carry (code, reason)."""

    PUBLISH = "publish"
    HEARTBEAT = "heartbeat"
    TOO_BIG = (CloseCode.MESSAGE_TOO_BIG, "message too big")
    TOO_FAST = (CloseCode.POLICY_VIOLATION, "rate limit exceeded")


@dataclass
class InboundPolicy:
    """The limits on what one client sends: size and rate, and which message is the heartbeat.

    The rate counts every frame the server has to act on: messages (published),
    heartbeats (answered) and pings and pongs (a ping is answered too). A
    client that floods any of them is closed with 1008, so no frame kind lets
    one client keep the worker busy.
    """

    heartbeat: str | None = None
    max_size: int | None = None
    bucket: TokenBucket | None = None

    @classmethod
    def from_settings(cls, now: float = 0.0) -> InboundPolicy:
        from . import settings

        rate = settings.get("WS4REDIS_RATE_LIMIT")
        return cls(
            heartbeat=settings.get("WS4REDIS_HEARTBEAT"),
            max_size=settings.get("WS4REDIS_MAX_MESSAGE_SIZE"),
            bucket=TokenBucket(rate[0], rate[1], now) if rate else None,
        )

    def judge(self, message: bytes, now: float) -> Verdict:
        """The verdict on one complete message (text or binary) the client sent at ``now``."""
        if self.max_size is not None and len(message) > self.max_size:
            return Verdict.TOO_BIG
        if not self.allow_frame(now):
            return Verdict.TOO_FAST
        if is_heartbeat(message, self.heartbeat):
            return Verdict.HEARTBEAT
        return Verdict.PUBLISH

    def allow_frame(self, now: float) -> bool:
        """Count one frame (a message, a ping or a pong) at ``now``; False once the client sends too fast."""
        return self.bucket is None or self.bucket.take(now)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def loggable(text: object, limit: int = 200) -> str:
    """``text`` from a request, safe for one log line: control characters escaped, cut at ``limit``.

    A path such as ``/ws/x%0A2026-01-01 ... CRITICAL ...`` must not start a
    forged line in the log.
    """
    value = str(text)
    if len(value) > limit:
        value = value[:limit] + "..."
    return _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), value)
