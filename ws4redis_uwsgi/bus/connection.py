"""Redis clients built from ``WS4REDIS_CONNECTION``.

The setting is a dict of :class:`redis.Redis` keyword arguments (``host``,
``port``, ``db``, ``password``, ``unix_socket_path``, ``ssl`` ...) or a
``redis://``, ``rediss://`` or ``unix://`` URL. redis-py itself turns either
form into connection parameters, so both forms behave exactly as redis-py
documents them.
"""

from __future__ import annotations

import inspect
from typing import Any

import redis

from .. import process, settings

URL_SCHEMES = ("redis://", "rediss://", "unix://")

#: Applied unless the setting says otherwise, so that a Redis that does not
#: answer makes a publisher fail after seconds instead of hanging a request.
DEFAULT_TIMEOUTS = {"socket_connect_timeout": 5.0, "socket_timeout": 5.0}

_REDIS_ARGUMENTS = frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}


def connection_problems(value: Any) -> list[str]:
    """Why ``value`` is not a usable ``WS4REDIS_CONNECTION`` (empty when it is)."""
    if isinstance(value, str):
        if not value.startswith(URL_SCHEMES):
            return [f"URL scheme must be one of {', '.join(URL_SCHEMES)}"]
        try:
            redis.Redis.from_url(value)
        except ValueError as exc:
            return [str(exc)]
        return []
    if isinstance(value, dict):
        unknown = sorted(set(value) - _REDIS_ARGUMENTS)
        return [f"unknown key {k!r} (not an argument of redis.Redis)" for k in unknown]
    return ["must be a dict of redis.Redis arguments or a redis://, rediss:// or unix:// URL"]


def _template(value: Any, overrides: dict[str, Any]) -> redis.Redis:
    # Building a client opens no connection; it only lets redis-py read the setting.
    if isinstance(value, str):
        kwargs = {k: v for k, v in {**DEFAULT_TIMEOUTS, **overrides}.items()}
        return redis.Redis.from_url(value, **kwargs)
    kwargs = {**DEFAULT_TIMEOUTS, **value, **overrides}
    client = redis.Redis(**kwargs)
    if "unix_socket_path" in kwargs:
        # redis.Redis drops socket_connect_timeout for unix sockets; the
        # connection class honours it, so put it back.
        client.connection_pool.connection_kwargs["socket_connect_timeout"] = kwargs["socket_connect_timeout"]
    return client


def make_client(value: Any = None, *, max_connections: int | None = None, **overrides: Any) -> redis.Redis:
    """A new client for ``value`` (default: the current setting).

    With ``max_connections`` the client uses a blocking pool of that size, so
    however many greenlets share it, it never opens more connections.
    """
    if value is None:
        value = settings.get("WS4REDIS_CONNECTION")
    template = _template(value, overrides)
    if max_connections is None:
        return template
    pool = template.connection_pool
    blocking = redis.BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=max_connections,
        timeout=pool.connection_kwargs.get("socket_timeout") or DEFAULT_TIMEOUTS["socket_timeout"],
        **pool.connection_kwargs,
    )
    return redis.Redis(connection_pool=blocking)


def get_client() -> redis.Redis:
    """The process-wide client for the current setting, shared by publishers.

    Keyed by the setting's value so that ``override_settings`` gets a client
    for the overridden server.
    """
    value = settings.get("WS4REDIS_CONNECTION")
    key = repr(sorted(value.items())) if isinstance(value, dict) else str(value)
    return process.resource(f"publisher client {key}", lambda: make_client(value))
