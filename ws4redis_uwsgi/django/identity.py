"""Who a request belongs to: session, user and groups, read from Django.

Both the websocket side (when a socket opens) and publishers using ``SELF``
go through here, so both see the same user and the same groups, read from
the database at that moment rather than frozen at login.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings as django_settings

from ..core.channels import Identity
from . import auth_lookup


def load_session_and_user(request: Any) -> None:
    """Attach ``request.session`` and ``request.user`` from the session cookie.

    This is what Django's session and authentication middleware would do; the
    websocket side runs no middleware. ``WS4REDIS_PROCESS_REQUEST`` replaces
    it (for token authentication, say). The result is Django's, but the
    lookups take the compiled queries of :mod:`.auth_lookup` where they can.
    """
    engine = import_module(django_settings.SESSION_ENGINE)
    session_key = request.COOKIES.get(django_settings.SESSION_COOKIE_NAME)
    request.session = engine.SessionStore(session_key)
    if session_key is not None:
        auth_lookup.load_session(request.session)
    request.user = auth_lookup.get_user(request)


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
            groups = auth_lookup.group_names(user)
    session_key = None
    session = getattr(request, "session", None)
    if session is not None:
        # Loading the session first makes a forged, unknown or expired cookie
        # yield no key: before loading, session_key is whatever the cookie said.
        session.keys()
        session_key = session.session_key
    return Identity(username, groups, session_key)


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
