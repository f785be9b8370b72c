"""Template context: ``WEBSOCKET_URI`` and ``WS4REDIS_HEARTBEAT``, as in ws4redis."""

from __future__ import annotations

from typing import Any

from django.utils.safestring import mark_safe

from .. import settings


def default(request: Any) -> dict[str, Any]:
    """``WEBSOCKET_URI`` is ``ws://`` or ``wss://`` (matching the page), host and ``WEBSOCKET_URL``."""
    protocol = "wss://" if request.is_secure() else "ws://"
    heartbeat = settings.get("WS4REDIS_HEARTBEAT")
    return {
        "WEBSOCKET_URI": protocol + request.get_host() + settings.get("WEBSOCKET_URL"),
        "WS4REDIS_HEARTBEAT": mark_safe(f"'{heartbeat}'") if heartbeat else None,  # noqa: S308 - validated by checks
    }
