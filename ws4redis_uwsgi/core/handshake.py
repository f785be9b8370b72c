"""The opening handshake: what makes a request a valid RFC 6455 upgrade, and the Origin check: pure.

Every adapter (uWSGI, the development server) refuses the same requests with
the same status, before anything is written.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.http.request import validate_host

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


#: The subprotocol the server answers when a client offers it: how a client
#: without cookies sends its token (see :mod:`ws4redis_uwsgi.django.tokens`).
SUBPROTOCOL = "ws4redis"
#: Offered next to :data:`SUBPROTOCOL`, ``ws4redis.token.<token>`` carries the token:
#: a header, which uWSGI and nginx do not write to their access logs, as they do the URL.
TOKEN_PROTOCOL_PREFIX = "ws4redis.token."  # noqa: S105 - a name, not a secret


def offered_protocols(header: str | None) -> list[str]:
    """The subprotocols of a ``Sec-WebSocket-Protocol`` header, in order."""
    return [p.strip() for p in (header or "").split(",") if p.strip()]


def chosen_protocol(offered: list[str]) -> str | None:
    """The subprotocol the server answers: :data:`SUBPROTOCOL` when offered (a browser that offers
    subprotocols fails the connection unless the server picks one)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def offered_token(offered: list[str]) -> str | None:
    """The token a client offered as ``ws4redis.token.<token>``, if any."""
    for protocol in offered:
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX) and len(protocol) > len(TOKEN_PROTOCOL_PREFIX):
            return protocol[len(TOKEN_PROTOCOL_PREFIX) :]
    return None
