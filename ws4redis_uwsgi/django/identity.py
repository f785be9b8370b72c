"""Who a request belongs to: session, user and groups, read from Django.

Both the websocket side (when a socket opens) and publishers using ``SELF``
go through here, so both see the same user and the same groups, read from
the database at that moment rather than frozen at login. (A websocket
worker serves a logged-in session that comes back from what it read for it,
for as long as :mod:`.identity_cache` says, until live authorization says
the session or its user changed.)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from .. import settings
from ..core.channels import Identity
from . import auth_lookup, identity_claim
from .identity_cache import CACHED_ENGINES, Entry, IdentityCache, clear_identity_cache, get_identity_cache
from .tokens import session_ref

#: Where a handshake's session and user came from (the metric ``ws4redis_handshake_identities_total``): read from
#: the database, the worker's identity cache, the page's identity claim, a websocket token, the site's
#: ``WS4REDIS_PROCESS_REQUEST``, or nowhere (no session cookie: anonymous without a query).
SOURCES = ("database", "cache", "claim", "token", "hook", "none")


@dataclass(slots=True)
class _Held:
    """The cache entry a handshake's session and user came from or went to (``request.ws4redis_identity``)."""

    cache: IdentityCache
    entry: Entry
    #: The user object the request was given: its groups come through the entry only while it is still the request's.
    user: Any


@dataclass(slots=True)
class _Claimed:
    """A handshake let in on an identity claim (``request.ws4redis_claim``): its session, unread, and when the claim was read."""

    session: Any
    read_at: float


def load_session_and_user(request: Any) -> None:
    """Attach ``request.session`` and ``request.user`` from the session cookie, and where they came from.

    This is what Django's session and authentication middleware would do; the
    websocket side runs no middleware. ``WS4REDIS_PROCESS_REQUEST`` replaces
    it (for token authentication, say). The result is Django's, but the
    lookups take the compiled queries of :mod:`.auth_lookup` where they can,
    and a logged-in session is served without them, as long as live
    authorization may evict what they would replace: from what this worker
    read for it when it comes back (:mod:`.identity_cache`), else from what
    the page it opens from read (:mod:`.identity_claim`).

    ``request.ws4redis_source`` says where they came from: one of :data:`SOURCES`
    but ``"token"`` and ``"hook"`` (``"none"``: no session cookie). A request
    :func:`load_without_reading` already served is left as it is.
    """
    if getattr(request, "ws4redis_source", None) in _WITHOUT_READING:
        return
    engine_name = django_settings.SESSION_ENGINE
    session_key = request.COOKIES.get(django_settings.SESSION_COOKIE_NAME)
    if _from_memory(request, engine_name, session_key, with_groups=False):
        return
    ttl = cache_seconds()
    cache = get_identity_cache() if session_key is not None and engine_name in CACHED_ENGINES and ttl > 0 else None
    ticket = cache.ticket() if cache is not None else 0  # before the reads: an eviction meanwhile voids them
    request.session = import_module(engine_name).SessionStore(session_key)
    if session_key is not None:
        auth_lookup.load_session(request.session)
    request.user, groups = auth_lookup.read_user(request)
    groups_read_with(request, request.user, groups)
    if cache is not None and _cacheable(request.session, request.user, session_key):
        assert session_key is not None
        entry = Entry(
            session=_own_session(request.session._session_cache),
            user=copy.copy(request.user),
            user_pk=str(request.user.pk),
            ref=session_ref(session_key),
            groups=groups,
        )
        max_age = settings.get("WS4REDIS_SESSION_RECHECK") or 0  # see identity_cache: the re-check's bound
        if cache.put((engine_name, session_key), entry, ticket, ttl, max_age):
            request.ws4redis_identity = _Held(cache, entry, request.user)
    request.ws4redis_source = "none" if session_key is None else "database"


#: The sources that read nothing: what :func:`load_without_reading` serves.
_WITHOUT_READING = ("cache", "claim")


def load_without_reading(request: Any) -> bool:
    """Attach session, user and groups as :func:`load_session_and_user` would, if that takes no query; else False.

    A logged-in session this worker read a moment ago, or whose page vouched
    for it. The websocket loop asks this first, in the websocket's own
    greenlet: a handshake served from memory skips the hop to the database
    greenlets and back (28 µs of a worker's CPU in a burst, about a seventh
    of such a handshake). Unlike :func:`load_session_and_user`, a cache entry whose
    groups were not read does not do: the groups would be a query.
    """
    session_key = request.COOKIES.get(django_settings.SESSION_COOKIE_NAME)
    return _from_memory(request, django_settings.SESSION_ENGINE, session_key, with_groups=True)


def _from_memory(request: Any, engine_name: str, session_key: str | None, with_groups: bool) -> bool:
    """Serve ``request`` from the identity cache or its page's claim; False when neither will do (nothing attached)."""
    if session_key is None or engine_name not in CACHED_ENGINES:
        return False
    cache = get_identity_cache()
    entry = cache.get((engine_name, session_key)) if cache_seconds() > 0 else None
    if entry is not None:
        groups = cache.groups_of(entry)
        if with_groups and groups is None:
            return False
        # Copies: one websocket's hooks must not change what another one is given.
        request.session = import_module(engine_name).SessionStore(session_key)
        request.session._session_cache = _own_session(entry.session)
        request.user = copy.copy(entry.user)
        request.ws4redis_identity = _Held(cache, entry, request.user)
        if with_groups:
            groups_read_with(request, request.user, groups)  # as they are now: no eviction can come between
        request.ws4redis_source = "cache"
        return True
    if getattr(request, "ws4redis_claim_refused", False):
        return False  # refused before the hop to the database greenlets: decrypted once per handshake
    claim = identity_claim.admitted(request.COOKIES, session_key, cache)
    if claim is None:
        request.ws4redis_claim_refused = True  # it would not be admitted later in this handshake either
        return False
    # The session is loaded only if a hook reads it; the claim vouches for its key.
    request.session = import_module(engine_name).SessionStore(session_key)
    request.user = identity_claim.user_of(claim)
    groups_read_with(request, request.user, claim.groups)
    request.ws4redis_claim = _Claimed(request.session, identity_claim.read_at(claim))
    request.ws4redis_source = "claim"
    return True


#: Values a session's data holds by copy: immutable, and of these exact types (a subclass may hold state).
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _own_session(data: dict[str, Any]) -> dict[str, Any]:
    """What ``copy.deepcopy(data)`` gives, for a sixth of the CPU when the session is the usual one: flat, JSON's scalars."""
    for value in data.values():
        if type(value) not in _IMMUTABLE:
            return copy.deepcopy(data)
    return dict(data)


def groups_read_with(request: Any, user: Any, groups: tuple[str, ...] | None) -> None:
    """Keep ``groups``, read in ``user``'s own query, for :func:`identity_from_request`: no query of their own.

    They serve only while ``user`` is still the request's user object (a hook may give it another). None: not read.
    """
    if groups is not None:
        request.ws4redis_groups = (user, groups)


def read_at(request: Any) -> float:
    """When what ``request`` was let in on was read from the database (``time.monotonic()``).

    Now, unless it came from the identity cache or a claim: then when the cache or the claim's page read it.
    Live authorization looks at it again within ``WS4REDIS_SESSION_RECHECK`` of that.
    """
    held: _Held | None = getattr(request, "ws4redis_identity", None)
    if held is not None:
        return held.entry.read_at
    claimed: _Claimed | None = getattr(request, "ws4redis_claim", None)
    return claimed.read_at if claimed is not None else time.monotonic()


def cache_seconds() -> float:
    """``WS4REDIS_IDENTITY_CACHE``: seconds an entry is kept after its read or its session's last websocket here (0: off)."""
    return settings.get("WS4REDIS_IDENTITY_CACHE") or 0


def _cacheable(session: Any, user: Any, cookie_key: str) -> bool:
    """Whether what was read is a logged-in session exactly as the cookie named it.

    Anonymous, unknown, expired or forged cookies are never kept (each costs
    its lookups, and no entry); nor a session Django re-keyed, flushed or
    changed while verifying it (``SECRET_KEY_FALLBACKS``).
    """
    return (
        user.is_authenticated
        and session.session_key == cookie_key
        and not session.modified
        and isinstance(getattr(session, "_session_cache", None), dict)
    )


def _forget(**kwargs: Any) -> None:
    clear_identity_cache()  # a test changed SECRET_KEY, AUTH_USER_MODEL...: what was read may no longer hold


setting_changed.connect(_forget, dispatch_uid="ws4redis_uwsgi.django.identity")


def identity_from_request(request: Any, with_groups: bool = True) -> Identity:
    """The :class:`Identity` (username, group names, session key) of ``request``.

    ``with_groups=False`` skips the groups query when no group channel is involved.
    """
    username = None
    groups: tuple[str, ...] = ()
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        username = user.get_username()
        if with_groups:
            groups = _group_names(request, user)
    session_key = None
    session = getattr(request, "session", None)
    if session is not None:
        claimed: _Claimed | None = getattr(request, "ws4redis_claim", None)
        if claimed is None or claimed.session is not session:
            # Loading the session first makes a forged, unknown or expired cookie
            # yield no key: before loading, session_key is whatever the cookie said.
            session.keys()
        session_key = session.session_key
    return Identity(username, groups, session_key)


def _group_names(request: Any, user: Any) -> tuple[str, ...]:
    """``user``'s group names: read with the user, or from the request's identity cache entry, else read (and kept there).

    Each only while ``user`` is still the request's user object (a hook may have given it another).
    """
    read: tuple[Any, tuple[str, ...]] | None = getattr(request, "ws4redis_groups", None)  # see groups_read_with
    if read is not None and read[0] is user:
        return read[1]
    held: _Held | None = getattr(request, "ws4redis_identity", None)
    if held is None or held.user is not user:  # no entry, or a hook gave the request another user
        return auth_lookup.group_names(user)
    groups = held.cache.groups_of(held.entry)
    if groups is not None:
        return groups
    ticket = held.cache.ticket()
    groups = auth_lookup.group_names(user)
    held.cache.add_groups(held.entry, groups, ticket)
    return groups


async def aidentity_from_request(request: Any, with_groups: bool = True) -> Identity:
    """:func:`identity_from_request` for async code, through Django's async APIs: the loop never waits on the database.

    ``request.auser()`` (Django's authentication middleware, 5.0+), the
    session's ``akeys()`` (Django 5.1+) and an async iteration of the user's
    groups (Django's async ORM). A request without ``auser`` (older Django,
    no middleware) is read by :func:`identity_from_request` through
    ``sync_to_async``, in Django's own thread.
    """
    session = getattr(request, "session", None)
    if not hasattr(request, "auser") or (session is not None and not hasattr(session, "akeys")):
        from asgiref.sync import sync_to_async

        return await sync_to_async(identity_from_request)(request, with_groups)
    username = None
    groups: tuple[str, ...] = ()
    user = await request.auser()
    if user is not None and user.is_authenticated:
        username = user.get_username()
        if with_groups and hasattr(user, "groups"):
            groups = tuple(sorted([name async for name in user.groups.values_list("name", flat=True)]))
    session_key = None
    if session is not None:
        await session.akeys()  # loaded first: a forged, unknown or expired cookie yields no key
        session_key = session.session_key
    return Identity(username, groups, session_key)
