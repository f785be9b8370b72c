"""Decisions about one websocket connection that need no I/O.

Handshake validation and heartbeat recognition live here so that every
adapter (uWSGI, the development server) decides the same way.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .exceptions import HandshakeError, UpgradeRequiredError

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
