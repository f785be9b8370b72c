"""The settings of ws4redis_uwsgi, read from Django settings on every access.

Reading lazily means ``override_settings`` in tests and late configuration
both work: ``settings.WS4REDIS_EXPIRE`` is looked up when it is used, not
when this module is imported. Validation lives in :mod:`ws4redis_uwsgi.checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    "WEBSOCKET_URL": "/ws/",
    "WS4REDIS_CONNECTION": {"host": "localhost", "port": 6379, "db": 0, "password": None},
    "WS4REDIS_PREFIX": None,
    "WS4REDIS_EXPIRE": 3600,
    "WS4REDIS_HEARTBEAT": None,
    "WS4REDIS_SUBSCRIBER": "ws4redis_uwsgi.subscriber.RedisSubscriber",
    "WS4REDIS_ALLOWED_CHANNELS": None,
    "WS4REDIS_PROCESS_REQUEST": None,
    # Safe by default: see the README's "Security and limits".
    "WS4REDIS_ALLOWED_ORIGINS": None,  # None: ALLOWED_HOSTS
    "WS4REDIS_ALLOW_MISSING_ORIGIN": False,
    "WS4REDIS_MAX_MESSAGE_SIZE": 64 * 1024,
    "WS4REDIS_RATE_LIMIT": (10, 20),  # messages per second, burst; None: no limit
    "WS4REDIS_MAX_CHANNELS": 100,
    "WS4REDIS_MAX_CONNECTIONS": None,  # None: what the worker's cores allow
    "WS4REDIS_MAX_PENDING_MESSAGES": 1000,
    "WS4REDIS_SEND_BUFFER": 128 * 1024,  # kernel send buffer per websocket, bytes
    # History for resuming clients: entries and seconds kept per channel; both 0: off.
    "WS4REDIS_HISTORY_LENGTH": 1000,
    "WS4REDIS_HISTORY_SECONDS": 3600,
}


def get(name: str) -> Any:
    """The current value of setting ``name``, or its default."""
    return getattr(django_settings, name, DEFAULTS[name])


def get_callable(name: str) -> Callable[..., Any] | None:
    """A setting that holds a callable or the dotted path of one."""
    value = get(name)
    if isinstance(value, str):
        return import_string(value)  # type: ignore[no-any-return]
    return value  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    # Module attributes (``settings.WEBSOCKET_URL``) as in ws4redis.settings.
    if name in DEFAULTS:
        return get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def allowed_origins() -> list[str]:
    """Host patterns an ``Origin`` must match: the setting, else ``ALLOWED_HOSTS`` as Django applies it."""
    patterns = get("WS4REDIS_ALLOWED_ORIGINS")
    if patterns is not None:
        return list(patterns)
    hosts = list(django_settings.ALLOWED_HOSTS)
    if django_settings.DEBUG and not hosts:
        return [".localhost", "127.0.0.1", "[::1]"]
    return hosts
