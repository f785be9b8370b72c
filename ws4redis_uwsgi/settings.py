"""The settings of ws4redis_uwsgi, read from Django settings when first used.

Reading lazily means late configuration works: ``settings.WS4REDIS_EXPIRE``
is looked up when it is used, not when this module is imported. Values are
then kept, because a handshake reads a dozen of them and an unset setting
costs Django an exception each time; Django's ``setting_changed`` signal
(sent by ``override_settings`` and the test tools) empties the cache, so
overrides in tests apply at once. Validation lives in :mod:`ws4redis_uwsgi.checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
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
    # Replica acknowledgement (WAIT): a publish returns once this many replicas hold it
    # (or raises after WS4REDIS_WAIT_TIMEOUT seconds); 0: off.
    "WS4REDIS_WAIT_REPLICAS": 0,
    "WS4REDIS_WAIT_TIMEOUT": 1.0,
    # RedisPublisher.publish_message's default for on_commit: inside transaction.atomic(),
    # publish once the transaction commits (never after a rollback).
    "WS4REDIS_PUBLISH_ON_COMMIT": False,
    # Dotted path of f(facility, channels, username) -> messages, sent to a resuming
    # client right after !gap so that the page need not reload its state.
    "WS4REDIS_ON_GAP": None,
    # Seconds a websocket token (ws4redis_uwsgi.django.tokens) lets a client in.
    "WS4REDIS_TOKEN_MAX_AGE": 60,
    # Seconds between two looks of a worker at every logged-in websocket's session (live
    # authorization, for what Django sends no signal for); 0: only when Django says.
    "WS4REDIS_SESSION_RECHECK": 60,
    # Seconds a websocket worker keeps what a logged-in handshake read (session, user, groups) for
    # the same session cookie's next handshakes, evicted by live authorization; 0 or None: off.
    "WS4REDIS_IDENTITY_CACHE": 5,
    # Seconds a page's identity claim (ws4redis_uwsgi.django.identity_claim, given by its middleware) lets
    # the page's websockets in without reading the database; at most WS4REDIS_SESSION_RECHECK; 0: off.
    "WS4REDIS_IDENTITY_CLAIM": 30,
    # Seconds a worker keeps a channel subscribed after its last websocket closed: the websocket
    # of a user's next page then subscribes nothing (ws4redis_uwsgi.bus.hub); 0: unsubscribe at once.
    "WS4REDIS_CHANNEL_LINGER": 5,
    # Handshakes per second a reloading or stopping worker's clients are told to spread their reconnection
    # over (the reason of its 1012, read by ws4redis.js): its websockets / this = the seconds; None: no hint.
    "WS4REDIS_RESTART_RECONNECT_RATE": 2000,
    # gc.set_threshold's third value in the websocket workers (Python's default: 10): full collections
    # walk every open websocket's objects (ws4redis_uwsgi.server.collector); None: Python's thresholds.
    "WS4REDIS_GC_FULL_THRESHOLD": 100,
    # Each uWSGI worker's metrics and health on a loopback port: worker n on this + n - 1; None: off.
    "WS4REDIS_METRICS_PORT": None,
    "WS4REDIS_METRICS_HOST": "127.0.0.1",
    # The port of the page's host where websockets are served, when not behind the pages'
    # own address (no proxy in front): the context processor's WEBSOCKET_URI; None: the page's.
    "WS4REDIS_WEBSOCKET_PORT": None,
    # The durable outbox (ws4redis_uwsgi.bus.durable): publish_message's default for durable=.
    "WS4REDIS_DURABLE_OUTBOX": False,
    # Databases whose outbox the drains empty; a durable publish must use one of them.
    "WS4REDIS_OUTBOX_DATABASES": ("default",),
    # Seconds between two drain rounds in each websocket worker; None: 5 with WS4REDIS_DURABLE_OUTBOX
    # on, else no drain there; 0: no drain there (run manage.py ws4redis drain-outbox yourself).
    "WS4REDIS_OUTBOX_DRAIN_INTERVAL": None,
    # Seconds a row must be old before a drain publishes it: the committing process publishes it first.
    "WS4REDIS_OUTBOX_GRACE": 10,
    # Presence (ws4redis_uwsgi.presence): False, True (every facility), a collection of
    # facility names, or f(facility) -> bool (or its dotted path).
    "WS4REDIS_PRESENCE": False,
    # Seconds a killed worker's connections may still count as present.
    "WS4REDIS_PRESENCE_TTL": 30,
}


_values: dict[str, Any] = {}
_callables: dict[str, Callable[..., Any] | None] = {}


def _forget(**kwargs: Any) -> None:
    _values.clear()
    _callables.clear()


setting_changed.connect(_forget, dispatch_uid="ws4redis_uwsgi.settings")


def get(name: str) -> Any:
    """The current value of setting ``name``, or its default."""
    try:
        return _values[name]
    except KeyError:
        value = _values[name] = getattr(django_settings, name, DEFAULTS[name])
        return value


def get_callable(name: str) -> Callable[..., Any] | None:
    """A setting that holds a callable or the dotted path of one."""
    try:
        return _callables[name]
    except KeyError:
        value = get(name)
        found = _callables[name] = import_string(value) if isinstance(value, str) else value
        return found


def __getattr__(name: str) -> Any:
    # Module attributes (``settings.WEBSOCKET_URL``) as in ws4redis.settings.
    if name in DEFAULTS:
        return get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def max_pending_messages() -> int:
    """``WS4REDIS_MAX_PENDING_MESSAGES``: messages that may wait for one websocket before it is closed as too slow.

    A limit of the websocket side like those in :mod:`ws4redis_uwsgi.server.limits`,
    but read here: the subscriber (``bus``) sets up its outbox with it, and
    ``bus`` may not import ``server``.
    """
    return get("WS4REDIS_MAX_PENDING_MESSAGES")


def allowed_origins() -> list[str]:
    """Host patterns an ``Origin`` must match: the setting, else ``ALLOWED_HOSTS`` as Django applies it."""
    patterns = get("WS4REDIS_ALLOWED_ORIGINS")
    if patterns is not None:
        return list(patterns)
    hosts = list(django_settings.ALLOWED_HOSTS)
    if django_settings.DEBUG and not hosts:
        return [".localhost", "127.0.0.1", "[::1]"]
    return hosts
