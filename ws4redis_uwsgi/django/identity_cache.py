"""What logged-in handshakes read from the database, kept a few seconds per worker for sessions that reconnect.

A browser opens a new websocket with the same session cookie on every page
of a multi-page site, after each network blip, on each restored tab. The
handshake's three database reads (the session, its user, the user's group
names) cost most of its CPU, so a worker keeps what one handshake read,
under ``(SESSION_ENGINE, cookie value)``: for as long as a websocket of
that session is open on the worker, and ``WS4REDIS_IDENTITY_CACHE`` seconds
after the read or after its last websocket closed, whichever is later; but
never longer than ``WS4REDIS_SESSION_RECHECK`` seconds from the read.

Why that long: live authorization watches a session while it has a websocket
here, and the next websocket of a page change opens right after the last
one closed, however long the user stayed on the page. A new websocket is
let in on exactly what keeps the open ones open: the signals, which evict,
and the periodic re-check of open websockets, which evicts what it closes.
The bound from the read stands in for that re-check when the session's
websockets come and go between its rounds: what no signal announces (a raw
``DELETE``, an expiry) is read again within the re-check's seconds.

Entries are evicted by live authorization
(:mod:`ws4redis_uwsgi.server.authority`): by user for ``user``, ``groups``
and ``gone``, by session reference for ``end`` and ``moved``, all of them
when the control channel was down. The cache answers only while
:attr:`IdentityCache.live` says those evictions arrive (the authority sets
it), so nothing is served that an eviction may have missed.

The same evictions decide whether a page's identity claim
(:mod:`.identity_claim`) may stand in for the reads: the cache notes when
(wall clock) it last evicted each user and session, and since when it has
been hearing evictions at all (:meth:`IdentityCache.admits`).

A read that was under way when an eviction came must not be stored: the
database may have answered before the change and the eviction found nothing
to evict (a handshake's query yields to other greenlets on PostgreSQL). So a
handshake takes a :meth:`~IdentityCache.ticket` before it reads, and
:meth:`~IdentityCache.put` refuses the result if any eviction happened
since. One counter for all users keeps that simple and always right; an
eviction storm costs only cache misses.

Plain Python, no I/O: the clock is handed in.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from .. import process

#: Entries per worker at most, least recently used dropped first. An entry is
#: a decoded session and a user object, a few kilobytes at most: 10,000 stay
#: within tens of megabytes, and a worker rarely sees more distinct sessions
#: reconnect within a few seconds (a reconnect storm of a whole site spreads
#: over the workers). Beyond that the cache only misses; it never grows.
MAX_ENTRIES = 10_000
#: The session engines whose sessions may be cached, or let in on a claim: Django's own, whose ends live
#: authorization hears of or docs/authorization.md documents. A site's engine may end sessions its own way.
CACHED_ENGINES = frozenset(f"django.contrib.sessions.backends.{name}" for name in ("db", "cached_db", "cache", "signed_cookies"))
#: Seconds an identity claim may be old at most, whatever the settings: the cache keeps its evictions' times that
#: long (and a second more, for the clocks of two hosts), a few hundred entries on a site with many logouts.
CLAIMS_AT_MOST = 600.0
_EVICTIONS_KEPT = CLAIMS_AT_MOST + 5.0


@dataclass(slots=True, eq=False)
class Entry:
    """What one handshake read for a session cookie: a copy, never handed out as is."""

    session: dict[str, Any]
    user: Any
    user_pk: str
    #: The session's reference (:func:`~ws4redis_uwsgi.django.tokens.session_ref`), as control commands name it.
    ref: str
    #: The user's group names, once a handshake read them (None: not yet).
    groups: tuple[str, ...] | None = None
    expires: float = 0.0
    #: When it was read (the cache's clock): a websocket let in on it is as fresh as that.
    read_at: float = 0.0
    #: Never served past this, whatever its websockets (see the module docstring).
    deadline: float = 0.0
    #: False once evicted or expired: a handshake that holds the entry stops trusting it.
    current: bool = True


def _never() -> bool:
    return False


def _nobody(ref: str) -> bool:
    return False


class IdentityCache:
    """Entries by key (``(SESSION_ENGINE, cookie value)``), with their expiry, an LRU bound and eviction by user and session."""

    def __init__(
        self, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._wall = wall
        #: When (``wall``) each user (``("user", pk)``) and session (``("ref", ref)``) was last evicted, oldest first.
        self._evicted: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: Since when (``wall``) every eviction reaches this worker; None: not known (not live, or cleared since).
        self._hearing_since: float | None = None
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._by_user: dict[str, set[Hashable]] = {}
        self._by_ref: dict[str, set[Hashable]] = {}
        self._epoch = 0
        #: Whether evictions reach this worker now (set by live authorization); until then nothing is served or kept.
        self.live: Callable[[], bool] = _never
        #: Whether a session (by reference) has a websocket open here: its entries do not expire meanwhile.
        self.held: Callable[[str], bool] = _nobody

    def __len__(self) -> int:
        return len(self._entries)

    def ticket(self) -> int:
        """Take before reading the database; give to :meth:`put` (or :meth:`add_groups`) with what was read."""
        return self._epoch

    def get(self, key: Hashable) -> Entry | None:
        """The current entry of ``key``, or None (expired ones are dropped)."""
        entry = self._entries.get(key)
        if entry is None or not self.live():
            return None
        if not self._alive(entry, self._clock()):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: Entry, ticket: int, ttl: float, max_age: float = 0.0) -> bool:
        """Keep ``entry`` under ``key`` for ``ttl`` seconds, unless an eviction came since ``ticket`` was taken.

        While a websocket of its session is open here it stays, for ``max_age`` seconds at most (at least ``ttl``).
        """
        if ticket != self._epoch or ttl <= 0 or not self.live():
            return False
        if key in self._entries:
            self._drop(key)
        now = self._clock()
        entry.read_at = now
        entry.expires = now + ttl
        entry.deadline = now + max(ttl, max_age)
        entry.current = True
        self._entries[key] = entry
        self._by_user.setdefault(entry.user_pk, set()).add(key)
        self._by_ref.setdefault(entry.ref, set()).add(key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        return True

    def groups_of(self, entry: Entry) -> tuple[str, ...] | None:
        """``entry``'s group names if they were read and it is still current, else None."""
        if entry.groups is None or not self.fresh(entry):
            return None
        return entry.groups

    def add_groups(self, entry: Entry, groups: tuple[str, ...], ticket: int) -> bool:
        """Keep the group names read for ``entry``'s user, unless an eviction came since ``ticket``."""
        if ticket != self._epoch or not self.fresh(entry):
            return False
        entry.groups = groups
        return True

    def fresh(self, entry: Entry) -> bool:
        """Whether ``entry`` may still be trusted: not evicted, not expired, evictions arriving."""
        return entry.current and self._alive(entry, self._clock()) and self.live()

    def _alive(self, entry: Entry, now: float) -> bool:
        return now < entry.deadline and (now < entry.expires or self.held(entry.ref))

    def release(self, ref: str, ttl: float) -> None:
        """The last websocket of session ``ref`` here closed: its entries live ``ttl`` seconds more at least."""
        expires = self._clock() + ttl
        for key in self._by_ref.get(ref, ()):
            entry = self._entries[key]
            entry.expires = max(entry.expires, expires)

    def hearing_from(self, since: float | None = None) -> None:
        """Evictions reach this worker from ``since`` (wall clock; now by default) on, if it is live.

        Live authorization says so once Redis confirmed its channel, at the
        worker's start and again after each time it was lost (see :meth:`admits`).
        """
        if self.live():
            self._hearing_since = self._wall() if since is None else since

    def admits(self, user_pk: str, ref: str, made_at: float) -> bool:
        """Whether what was read about user ``user_pk`` and session ``ref`` at ``made_at`` (wall clock) still holds.

        True when this worker has heard every eviction since before
        ``made_at`` and none of them was of that user or that session. A
        claim older than :data:`CLAIMS_AT_MOST` seconds is never admitted
        (its evictions may be forgotten).
        """
        if not self.live():
            self._hearing_since = None
            return False
        now = self._wall()
        if self._hearing_since is None:
            self._hearing_since = now  # live, but nobody said since when: from now on
        if made_at < self._hearing_since or made_at < now - CLAIMS_AT_MOST:
            return False
        for key in (("user", user_pk), ("ref", ref)):
            evicted = self._evicted.get(key)
            if evicted is not None and evicted >= made_at:
                return False
        return True

    def _note(self, key: tuple[str, str]) -> None:
        """Remember when ``key`` was evicted (for :meth:`admits`); forget the evictions no claim can predate any more."""
        now = self._wall()
        self._evicted[key] = now
        self._evicted.move_to_end(key)
        while self._evicted:
            oldest = next(iter(self._evicted.values()))
            if oldest >= now - _EVICTIONS_KEPT:
                break
            self._evicted.popitem(last=False)

    def evict_user(self, user_pk: str) -> None:
        """Forget every session of user ``user_pk`` (its groups, password or state changed, or it is gone)."""
        self._epoch += 1
        self._note(("user", user_pk))
        for key in tuple(self._by_user.get(user_pk, ())):
            self._drop(key)

    def evict_ref(self, ref: str) -> None:
        """Forget the session whose reference is ``ref`` (it ended, or took a new key)."""
        self._epoch += 1
        self._note(("ref", ref))
        for key in tuple(self._by_ref.get(ref, ())):
            self._drop(key)

    def clear(self) -> None:
        """Forget everything (evictions may have been missed): no claim made before now is admitted either."""
        self._epoch += 1
        self._hearing_since = None
        for entry in self._entries.values():
            entry.current = False
        self._entries.clear()
        self._by_user.clear()
        self._by_ref.clear()

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        entry.current = False
        for index, name in ((self._by_user, entry.user_pk), (self._by_ref, entry.ref)):
            keys = index[name]
            keys.discard(key)
            if not keys:
                del index[name]


_RESOURCE = "identity cache"


def get_identity_cache() -> IdentityCache:
    """This process's :class:`IdentityCache`."""
    return process.resource(_RESOURCE, IdentityCache)


def clear_identity_cache() -> None:
    """Empty this process's cache if it has one (making none)."""
    cache: IdentityCache | None = process.existing(_RESOURCE)
    if cache is not None:
        cache.clear()
