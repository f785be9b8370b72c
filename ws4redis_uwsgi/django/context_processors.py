"""Template context: ``WEBSOCKET_URI`` and ``WS4REDIS_HEARTBEAT``, as in ws4redis."""

from __future__ import annotations

from typing import Any

from django.http.request import split_domain_port
from django.utils.safestring import mark_safe

from .. import settings


def default(request: Any) -> dict[str, Any]:
    """``WEBSOCKET_URI`` is ``ws://`` or ``wss://`` (matching the page), host and ``WEBSOCKET_URL``.

    With ``WS4REDIS_WEBSOCKET_PORT`` the websockets are on that port of the
    page's host (a vassal serving them apart, with no proxy in front): a
    browser sends the site's cookies there too, as cookies do not depend on
    the port, and the Origin check ignores ports.
    """
    protocol = "wss://" if request.is_secure() else "ws://"
    heartbeat = settings.get("WS4REDIS_HEARTBEAT")
    host = request.get_host()
    port = settings.get("WS4REDIS_WEBSOCKET_PORT")
    if port is not None:
        domain, _ = split_domain_port(host)  # an IPv6 address keeps its brackets
        host = f"{domain or host}:{port}"
    return {
        "WEBSOCKET_URI": protocol + host + settings.get("WEBSOCKET_URL"),
        "WS4REDIS_HEARTBEAT": mark_safe(f"'{heartbeat}'") if heartbeat else None,  # noqa: S308 - validated by checks
    }
