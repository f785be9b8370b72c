"""Presence, the pure part: which facilities have it, key names, event frames, a worker's own counts.

Nothing here touches Redis, Django or sockets (see :mod:`ws4redis_uwsgi.bus.presence`
for the Redis side and :mod:`ws4redis_uwsgi.presence` for the public API).

**Keys.** Per facility, every key shares one base, ``{p}presence:{facility}``
(``{p}{presence:{facility}}`` with Redis Cluster, a hash tag, so the scripts
touch one slot); the base is also the channel of the facility's events:

* ``<base>:users``: hash username -> open connections, on every worker;
* ``<base>:total``: every open connection, anonymous ones included;
* ``<base>:workers``: sorted set of the workers with connections there, scored
  by when they expire (ms, Redis's clock) unless they refresh;
* ``<base>:wtotals``: hash worker -> its open connections;
* ``<base>:w:<worker>``: hash username -> that worker's open connections.

**Events.** A join (a user's first connection to the facility opens, on any
worker) and a leave (the last one closes) travel on the base channel and
reach a client that asked for them as a frame of its own: ``!join\\n<username>``
or ``!leave\\n<username>``. Such a client gets its messages framed
(``<token>\\n<payload>``, as with ``resume``), and a token never starts with
``!``: an event cannot be mistaken for a message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .channels import prefix_string, validate_facility
from .exceptions import HandshakeError

JOIN = "join"
LEAVE = "leave"
EVENTS = (JOIN, LEAVE)

#: Default of ``WS4REDIS_PRESENCE_TTL``: seconds a killed worker's connections may still be counted.
DEFAULT_TTL = 30


def check_facility(facility: Any) -> str:
    """``facility`` if it can be a facility, for the public API.

    :raises TypeError: not a string.
    :raises ValueError: empty, longer than 200 characters, or holding ``:``,
        glob characters, whitespace or control characters.
    """
    if not isinstance(facility, str):
        raise TypeError(f"a facility is a str, not {type(facility).__name__}")
    try:
        return validate_facility(facility)
    except HandshakeError as exc:
        raise ValueError(f"not a facility ({exc}): {facility[:80]!r}") from None


# -- WS4REDIS_PRESENCE --------------------------------------------------------------


def setting_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable ``WS4REDIS_PRESENCE`` (None when it is); dotted paths are not imported here."""
    if isinstance(value, bool) or callable(value):
        return None
    if isinstance(value, str):
        if "." not in value:
            return f"is {value!r}, which is no dotted path; for one facility write [{value!r}]"
        return None
    if isinstance(value, (bytes, dict)) or not isinstance(value, Collection):
        return f"is {value!r}"
    for name in value:
        if not isinstance(name, str):
            return f"holds {name!r}, which is not a facility name"
        try:
            validate_facility(name)
        except HandshakeError as exc:
            return f"holds {name[:80]!r}, which is not a facility name ({exc})"
    return None


def presence_rule(value: Any, load: Callable[[str], Any]) -> Callable[[str], bool]:
    """The decision ``f(facility) -> bool`` that ``WS4REDIS_PRESENCE`` describes; ``load`` imports a dotted path."""
    if value is True:
        return _always
    if value is False or value is None:
        return _never
    if isinstance(value, str):
        function = load(value)
        return lambda facility: bool(function(facility))
    if callable(value):
        return lambda facility: bool(value(facility))
    names = frozenset(value)
    return names.__contains__


def _always(facility: str) -> bool:
    return True


def _never(facility: str) -> bool:
    return False


def ttl_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable ``WS4REDIS_PRESENCE_TTL`` (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 86400:
        return f"is {value!r}"
    return None


def heartbeat_interval(ttl: float) -> float:
    """Seconds between two refreshes of a worker's presence: a fifth of the TTL."""
    return ttl / 5


def expiry_ms(ttl: float) -> int:
    """How long after its last refresh a worker counts as dead (ms): three fifths of the TTL.

    A live worker may miss two refreshes (a busy event loop, a slow Redis)
    before it is taken for dead. Readers drop a dead worker's connections
    when they read; workers when they refresh, a heartbeat later at most:
    so a killed worker's leave events come within four fifths of the TTL.
    """
    return int(ttl * 600)


# -- names ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresenceKeys:
    """The Redis names of one facility's presence (see the module docstring)."""

    base: str

    @classmethod
    def of(cls, prefix: str | None, facility: str, *, sharded: bool = False) -> PresenceKeys:
        name = f"presence:{facility}"
        return cls(f"{prefix_string(prefix)}{{{name}}}" if sharded else f"{prefix_string(prefix)}{name}")

    @property
    def channel(self) -> str:
        return self.base

    @property
    def users(self) -> str:
        return f"{self.base}:users"

    @property
    def total(self) -> str:
        return f"{self.base}:total"

    @property
    def workers(self) -> str:
        return f"{self.base}:workers"

    @property
    def worker_totals(self) -> str:
        return f"{self.base}:wtotals"

    def worker(self, worker: str) -> str:
        return f"{self.base}:w:{worker}"


# -- event frames ---------------------------------------------------------------------------

_EVENT = re.compile(rb"!(join|leave)\n(.+)", re.DOTALL)


def event_frame(kind: str, username: str) -> bytes:
    """The frame a client gets for an event (the same bytes travel on the bus)."""
    if kind not in EVENTS:
        raise ValueError(f"unknown presence event {kind!r}")
    return b"!" + kind.encode("ascii") + b"\n" + username.encode("utf-8")


def parse_event(data: bytes) -> tuple[str, str] | None:
    """``(kind, username)`` of an event frame, or None for anything else (dropped)."""
    match = _EVENT.fullmatch(data)
    if match is None:
        return None
    try:
        return match[1].decode("ascii"), match[2].decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- a worker's own connections ------------------------------------------------------------


class LocalPresence:
    """One worker's open connections to one facility, and the changes Redis has not heard of yet.

    Anonymous connections (``username`` None) count in the total only.
    """

    __slots__ = ("pending", "pending_total", "total", "users")

    def __init__(self) -> None:
        self.users: Counter[str] = Counter()
        self.total = 0
        #: username -> connections opened minus closed since the last :meth:`take_changes`.
        self.pending: dict[str, int] = {}
        self.pending_total = 0

    def add(self, username: str | None) -> None:
        self._change(username, 1)

    def remove(self, username: str | None) -> None:
        self._change(username, -1)

    def _change(self, username: str | None, delta: int) -> None:
        self.total += delta
        self.pending_total += delta
        if username is not None:
            count = self.users[username] + delta
            if count > 0:
                self.users[username] = count
            else:
                del self.users[username]
            self.pending[username] = self.pending.get(username, 0) + delta

    @property
    def changed(self) -> bool:
        return bool(self.pending_total or any(self.pending.values()))

    def take_changes(self) -> tuple[int, dict[str, int]]:
        """The net changes since the last call (a tab reloaded nets to nothing), forgotten here."""
        total, users = self.pending_total, {u: d for u, d in self.pending.items() if d}
        self.pending, self.pending_total = {}, 0
        return total, users

    def take_state(self) -> tuple[int, dict[str, int]]:
        """Every open connection, for a full resynchronisation; pending changes are part of it."""
        self.pending, self.pending_total = {}, 0
        return self.total, dict(self.users)
