"""Django system checks for the ws4redis_uwsgi settings, each with a fix-it hint."""

from __future__ import annotations

import re
from typing import Any

from django.core.checks import Error, Warning, register
from django.utils.module_loading import import_string

from . import settings
from .bus.connection import connection_problems
from .core import presence

_HEARTBEAT = re.compile(r"[\w .:-]{1,64}")


def _error(setting: str, msg: str, hint: str, n: int) -> Error:
    return Error(f"{setting} {msg}", hint=hint, id=f"ws4redis_uwsgi.E{n:03d}")


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    url = settings.get("WEBSOCKET_URL")
    if not (isinstance(url, str) and url.startswith("/") and url.endswith("/")):
        errors.append(_error("WEBSOCKET_URL", f"is {url!r}.", "Use a path that starts and ends with '/', such as '/ws/'.", 1))
    for problem in connection_problems(settings.get("WS4REDIS_CONNECTION")):
        errors.append(
            _error(
                "WS4REDIS_CONNECTION",
                f"is not usable: {problem}.",
                "Use a dict such as {'host': 'localhost', 'port': 6379, 'db': 0}, a URL such as "
                "'redis://localhost:6379/0', 'redis+sentinel://h1:26379,h2:26379/mymaster' or "
                "'redis+cluster://h1:7000,h2:7001', or a Sentinel or Cluster dict (see the README).",
                2,
            )
        )
    prefix = settings.get("WS4REDIS_PREFIX")
    if prefix is not None and (not isinstance(prefix, str) or re.search(r"[:*?\[\]\s]", prefix)):
        errors.append(_error("WS4REDIS_PREFIX", f"is {prefix!r}.", "Use None or a word without ':', '*', '?', '[' or spaces.", 3))
    expire = settings.get("WS4REDIS_EXPIRE")
    if not isinstance(expire, int) or isinstance(expire, bool) or expire < 0:
        errors.append(_error("WS4REDIS_EXPIRE", f"is {expire!r}.", "Use a number of seconds, 0 to persist nothing.", 4))
    heartbeat = settings.get("WS4REDIS_HEARTBEAT")
    if heartbeat is not None and not (isinstance(heartbeat, str) and _HEARTBEAT.fullmatch(heartbeat)):
        errors.append(
            _error(
                "WS4REDIS_HEARTBEAT",
                f"is {heartbeat!r}.",
                "Use None or a short string of letters, digits, spaces, '.', ':' or '-'.",
                5,
            )
        )
    replicas = settings.get("WS4REDIS_WAIT_REPLICAS")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        hint = "Use 0 (off) or the number of replicas to wait for."
        errors.append(_error("WS4REDIS_WAIT_REPLICAS", f"is {replicas!r}.", hint, 9))
    wait = settings.get("WS4REDIS_WAIT_TIMEOUT")
    if not _positive(wait):
        errors.append(_error("WS4REDIS_WAIT_TIMEOUT", f"is {wait!r}.", "Use a number of seconds above 0, such as 1.0.", 10))
    max_age = settings.get("WS4REDIS_TOKEN_MAX_AGE")
    if not _count(max_age):
        errors.append(_error("WS4REDIS_TOKEN_MAX_AGE", f"is {max_age!r}.", "Use a number of seconds, such as 60.", 13))
    recheck = settings.get("WS4REDIS_SESSION_RECHECK")
    if not _seconds(recheck):
        errors.append(
            _error("WS4REDIS_SESSION_RECHECK", f"is {recheck!r}.", "Use seconds, such as 60 (0: no periodic re-check).", 14)
        )
    cached = settings.get("WS4REDIS_IDENTITY_CACHE")
    if cached is not None and not _seconds(cached):
        hint = "Use seconds, such as 5 (0 or None: no cache)."
        errors.append(_error("WS4REDIS_IDENTITY_CACHE", f"is {cached!r}.", hint, 18))
    claim = settings.get("WS4REDIS_IDENTITY_CLAIM")
    if claim is not None and not _seconds(claim):
        hint = "Use seconds, such as 30 (0 or None: handshakes never take a page's identity claim)."
        errors.append(_error("WS4REDIS_IDENTITY_CLAIM", f"is {claim!r}.", hint, 37))
    rate = settings.get("WS4REDIS_RESTART_RECONNECT_RATE")
    if rate is not None and not _positive(rate):
        hint = "Use handshakes per second a worker takes, such as 2000 (None: clients get no hint)."
        errors.append(_error("WS4REDIS_RESTART_RECONNECT_RATE", f"is {rate!r}.", hint, 36))
    full = settings.get("WS4REDIS_GC_FULL_THRESHOLD")
    if full is not None and not _count(full):
        hint = "Use a number of young collections, such as 100 (None: Python's own thresholds)."
        errors.append(_error("WS4REDIS_GC_FULL_THRESHOLD", f"is {full!r}.", hint, 35))
    linger = settings.get("WS4REDIS_CHANNEL_LINGER")
    if not _seconds(linger):
        hint = "Use seconds, such as 5 (0: unsubscribe at once)."
        errors.append(_error("WS4REDIS_CHANNEL_LINGER", f"is {linger!r}.", hint, 34))
    port = settings.get("WS4REDIS_METRICS_PORT")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        errors.append(_error("WS4REDIS_METRICS_PORT", f"is {port!r}.", "Use a port number, such as 9300, or None.", 15))
    ws_port = settings.get("WS4REDIS_WEBSOCKET_PORT")
    if ws_port is not None and (not isinstance(ws_port, int) or isinstance(ws_port, bool) or not 0 < ws_port < 65536):
        errors.append(_error("WS4REDIS_WEBSOCKET_PORT", f"is {ws_port!r}.", "Use a port number, such as 8001, or None.", 17))
    host = settings.get("WS4REDIS_METRICS_HOST")
    if not isinstance(host, str) or not host:
        errors.append(_error("WS4REDIS_METRICS_HOST", f"is {host!r}.", "Use an address, such as '127.0.0.1'.", 16))
    on_commit = settings.get("WS4REDIS_PUBLISH_ON_COMMIT")
    if not isinstance(on_commit, bool):
        errors.append(_error("WS4REDIS_PUBLISH_ON_COMMIT", f"is {on_commit!r}.", "Use True or False.", 11))
    dotted = [
        (6, "WS4REDIS_SUBSCRIBER"),
        (7, "WS4REDIS_ALLOWED_CHANNELS"),
        (8, "WS4REDIS_PROCESS_REQUEST"),
        (12, "WS4REDIS_ON_GAP"),
    ]
    for n, name in dotted:
        value = settings.get(name)
        if isinstance(value, str):
            try:
                import_string(value)
            except ImportError as exc:
                errors.append(_error(name, f"cannot be imported: {exc}.", "Give the dotted path of an importable object.", n))
        elif value is not None and not callable(value):
            errors.append(_error(name, f"is {value!r}.", "Give a callable or the dotted path of one.", n))
    return errors


@register()
def check_presence(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """WS4REDIS_PRESENCE (E020) and WS4REDIS_PRESENCE_TTL (E021)."""
    errors: list[Error] = []
    value = settings.get("WS4REDIS_PRESENCE")
    problem = presence.setting_problem(value)
    if problem is None and isinstance(value, str):
        try:
            import_string(value)
        except ImportError as exc:
            problem = f"cannot be imported: {exc}"
    if problem is not None:
        hint = (
            "Use False, True (every facility), a list of facility names such as ['chat'], "
            "or a function f(facility) -> bool or its dotted path."
        )
        errors.append(_error("WS4REDIS_PRESENCE", f"{problem}.", hint, 20))
    ttl = settings.get("WS4REDIS_PRESENCE_TTL")
    if presence.ttl_problem(ttl) is not None:
        hint = f"Use a number of seconds from 1 to 86400, such as {presence.DEFAULT_TTL}."
        errors.append(_error("WS4REDIS_PRESENCE_TTL", f"is {ttl!r}.", hint, 21))
    return errors


DEVELOPMENT_APPLICATION = "ws4redis_uwsgi.django_runserver.application"


@register()
def check_runserver(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """The development application needs this package's runserver, which the first app listed with one provides."""
    from django.conf import settings as django_settings
    from django.core.management import get_commands

    if getattr(django_settings, "WSGI_APPLICATION", None) != DEVELOPMENT_APPLICATION:
        return []
    owner = get_commands().get("runserver")
    if owner == "ws4redis_uwsgi":
        return []
    return [
        Warning(
            f"WSGI_APPLICATION is {DEVELOPMENT_APPLICATION!r}, but `manage.py runserver` is {owner}'s: "
            "it serves pages, and refuses websockets with HTTP 500.",
            hint="List 'ws4redis_uwsgi' above 'django.contrib.staticfiles' (and any other app with a runserver "
            "command) in INSTALLED_APPS.",
            id="ws4redis_uwsgi.W001",
        )
    ]


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _positive(value: Any) -> bool:
    """A number above 0 (a bool is none)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _count(value: Any) -> bool:
    """An integer of at least 1 (a bool is none)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@register()
def check_durable_outbox(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The durable outbox's settings (docs/publishing.md, "Durable outbox")."""
    from django.conf import settings as django_settings

    errors: list[Error] = []
    enabled = settings.get("WS4REDIS_DURABLE_OUTBOX")
    if not isinstance(enabled, bool):
        errors.append(_error("WS4REDIS_DURABLE_OUTBOX", f"is {enabled!r}.", "Use True or False.", 30))
    aliases = settings.get("WS4REDIS_OUTBOX_DATABASES")
    hint = "Use a list of aliases of DATABASES, such as ['default']."
    if isinstance(aliases, str) or not isinstance(aliases, (list, tuple)) or not aliases:
        errors.append(_error("WS4REDIS_OUTBOX_DATABASES", f"is {aliases!r}.", hint, 31))
    else:
        unknown = [alias for alias in aliases if alias not in django_settings.DATABASES]
        if unknown:
            errors.append(_error("WS4REDIS_OUTBOX_DATABASES", f"names databases not in DATABASES: {unknown!r}.", hint, 31))
    interval = settings.get("WS4REDIS_OUTBOX_DRAIN_INTERVAL")
    if interval is not None and not _seconds(interval):
        hint = "Use None (5 seconds with WS4REDIS_DURABLE_OUTBOX, else no drain), 0 (no drain) or a number of seconds."
        errors.append(_error("WS4REDIS_OUTBOX_DRAIN_INTERVAL", f"is {interval!r}.", hint, 32))
    grace = settings.get("WS4REDIS_OUTBOX_GRACE")
    if not _seconds(grace) or not grace > 0:
        hint = "Use a number of seconds above 0, longer than a commit takes to publish, such as 10."
        errors.append(_error("WS4REDIS_OUTBOX_GRACE", f"is {grace!r}.", hint, 33))
    return errors
