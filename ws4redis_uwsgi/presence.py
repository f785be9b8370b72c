"""Who is connected to a facility, across every worker and vassal sharing the Redis: the public API.

Opt-in per facility with ``WS4REDIS_PRESENCE``::

    from ws4redis_uwsgi import presence

    presence.online_users("chat")   # {"john": 3, "mary": 1}: users and their open connections
    presence.count("chat")          # 5: every open connection, anonymous ones included

Both raise :class:`TypeError` for a facility that is not a ``str``,
:class:`ValueError` for a string that cannot be a facility (empty, longer
than 200 characters, with ``:``, glob characters, whitespace or control
characters) and for a facility without presence (a :class:`PresenceOffError`),
and what redis-py raises when Redis cannot be reached. A facility with
presence where nobody is connected gives ``{}`` and ``0``.

How it is kept in Redis, what it costs and the events clients may ask for:
:mod:`ws4redis_uwsgi.core.presence` and :mod:`ws4redis_uwsgi.bus.presence`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from . import process, settings
from .bus import presence as bus
from .bus.connection import get_client, setting_key, sharded
from .core.presence import PresenceKeys, check_facility, presence_rule

__all__ = ["PresenceOffError", "count", "enabled", "online_users"]


class PresenceOffError(ValueError):
    """The facility has no presence: ``WS4REDIS_PRESENCE`` does not name it."""


_rule: list[Callable[[str], bool]] = []


def _forget(**kwargs: Any) -> None:
    _rule.clear()


setting_changed.connect(_forget, dispatch_uid="ws4redis_uwsgi.presence")


def enabled(facility: str) -> bool:
    """Whether ``facility`` has presence (``WS4REDIS_PRESENCE``)."""
    if not _rule:
        _rule.append(presence_rule(settings.get("WS4REDIS_PRESENCE"), import_string))
    return _rule[0](facility)


def _keys(facility: Any) -> PresenceKeys:
    facility = check_facility(facility)
    if not enabled(facility):
        raise PresenceOffError(f"facility {facility!r} has no presence: add it to WS4REDIS_PRESENCE")
    return PresenceKeys.of(settings.get("WS4REDIS_PREFIX"), facility, sharded=sharded())


def _scripts() -> tuple[Any, bus.Scripts]:
    """The publishers' client and its presence scripts, kept per process under the key the client is kept by.

    That key is the connection setting's value (see :func:`~ws4redis_uwsgi.bus.connection.get_client`),
    not the client's identity, which a later client may reuse.
    """
    key = setting_key(settings.get("WS4REDIS_CONNECTION"))
    client = get_client()
    return client, process.resource(f"presence scripts {key}", lambda: bus.Scripts(client))


def count(facility: str) -> int:
    """Every open connection to ``facility``, anonymous ones included: O(1), whatever the number of users."""
    keys = _keys(facility)
    _, scripts = _scripts()
    return bus.read_count(scripts, keys, sharded=sharded())


def online_users(facility: str) -> dict[str, int]:
    """``{username: open connections}`` on ``facility``, across all workers: O(users present) (HSCAN)."""
    keys = _keys(facility)
    client, scripts = _scripts()
    return bus.read_users(client, scripts, keys, sharded=sharded())


# -- for the websocket server -----------------------------------------------------------


def board() -> bus.PresenceBoard:
    """This worker's :class:`~ws4redis_uwsgi.bus.presence.PresenceBoard`, made on first use."""
    from .bus import resources

    return process.resource(
        "presence board",
        lambda: bus.PresenceBoard(
            resources.command_client(),
            resources.get_hub(),
            prefix=settings.get("WS4REDIS_PREFIX"),
            sharded=sharded(),
            ttl=settings.get("WS4REDIS_PRESENCE_TTL"),
        ),
    )


def membership(subscriber: Any, events: bool) -> bus.Membership | None:
    """The presence of a websocket whose subscriber is set up, or None when its facility has none (no cost)."""
    facility = subscriber.facility
    if facility is None or not enabled(facility):
        return None
    return bus.Membership(board(), facility, subscriber.username, subscriber, events)
