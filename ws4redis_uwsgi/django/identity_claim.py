"""A page's word for whose its websockets are: the first websocket after a page load opens without the database.

A logged-in handshake spends most of its CPU reading the session, the user
and the user's groups (bench/README.md), the very things the page the
browser has just loaded read a moment before. :class:`IdentityClaimMiddleware`
on the pages puts what they read in a cookie of its own, encrypted and
authenticated with a key derived from ``SECRET_KEY`` (Fernet: it can be
neither read nor forged), and a
websocket worker lets the handshake in on it instead of reading, when
nothing can have changed since:

* the claim names the session it was made for (by reference, see
  :func:`~ws4redis_uwsgi.django.tokens.session_ref`): it is worth nothing
  without that session's cookie, which lets the same user in anyway;
* it is at most ``WS4REDIS_IDENTITY_CLAIM`` seconds old (and never older
  than ``WS4REDIS_SESSION_RECHECK``, what the worker allows a read of its
  own, see :mod:`.identity_cache`);
* the worker has heard live authorization's commands since before the
  claim was made, and none of them was about its user or its session
  (:meth:`~ws4redis_uwsgi.django.identity_cache.IdentityCache.admits`): a
  logout, a password change, a group change made before the claim was used
  sends the handshake to the database.

Anything else (no claim, another session's, an old one, a forged one) and
the handshake reads the database as before: a claim only ever saves reads.
The claim's time is when its request started, before anything was read for
it, and the worker takes it :data:`CLOCK_MARGIN` earlier still, for the
clocks of two hosts. The user the handshake gets is the site's user model
with the claim's primary key and username; its other fields load from the
database if a hook reads them (Django's deferred fields).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import salted_hmac

from .. import settings
from ..core.throttle import Throttle
from . import auth_lookup
from .identity_cache import CACHED_ENGINES, CLAIMS_AT_MOST, IdentityCache
from .tokens import session_ref

logger = logging.getLogger("ws4redis_uwsgi")

SALT = "ws4redis_uwsgi.identity-claim"
#: The cookie the claim travels in: where the session cookie goes (its path and domain), HttpOnly (no script reads it).
COOKIE_NAME = "ws4redis_identity"
#: Seconds two hosts' clocks may differ by: a claim counts as made that much earlier than it says.
CLOCK_MARGIN = 1.0

_unreadable = Throttle(10.0)


@dataclass(frozen=True, slots=True)
class IdentityClaim:
    """What a page read for a session: its user and the user's group names, at ``made_at`` (``time.time()``)."""

    ref: str
    user_pk: str | int
    username: str
    groups: tuple[str, ...]
    made_at: float


def max_age() -> float:
    """Seconds a claim lets a handshake in: ``WS4REDIS_IDENTITY_CLAIM``, at most ``WS4REDIS_SESSION_RECHECK`` (0: off)."""
    seconds = float(settings.get("WS4REDIS_IDENTITY_CLAIM") or 0)
    recheck = settings.get("WS4REDIS_SESSION_RECHECK") or 0
    if recheck > 0:
        seconds = min(seconds, float(recheck))
    return min(seconds, CLAIMS_AT_MOST)


@functools.lru_cache(maxsize=4)
def _box_of(secrets: tuple[str, ...]) -> MultiFernet:
    """Fernet with a key of each secret (the first encrypts, any decrypts), derived with a salt of its own."""
    keys = [salted_hmac(SALT, "fernet key", secret=secret, algorithm="sha256").digest() for secret in secrets]
    return MultiFernet([Fernet(base64.urlsafe_b64encode(key)) for key in keys])


def _box() -> MultiFernet:
    """``SECRET_KEY``'s, and ``SECRET_KEY_FALLBACKS``' when reading: a key rotation keeps the claims of the moment."""
    fallbacks = getattr(django_settings, "SECRET_KEY_FALLBACKS", [])
    return _box_of((str(django_settings.SECRET_KEY), *(str(key) for key in fallbacks)))


def dump(claim: IdentityClaim) -> str:
    """The cookie value of ``claim``: compact JSON, encrypted and authenticated (its time in milliseconds, rounded down).

    Encrypted, not only signed: the user's group names are the site's
    business, and the browser's owner (or whoever reads its cookies) should
    not learn them from a cookie when the site shows them nowhere.
    """
    pk = claim.user_pk if type(claim.user_pk) is int else str(claim.user_pk)  # a UUID key, say: as a string
    data = [claim.ref, pk, claim.username, list(claim.groups), math.floor(claim.made_at * 1000) / 1000]
    return _box().encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()


def load(value: str) -> IdentityClaim | None:
    """The claim in a cookie value, or None: not made by this site (forged, another ``SECRET_KEY``) or malformed."""
    try:
        ref, user_pk, username, groups, made_at = json.loads(_box().decrypt(value.encode()))
    except (InvalidToken, ValueError, TypeError):
        return None
    if not (
        isinstance(ref, str)
        and type(user_pk) in (str, int)
        and isinstance(username, str)
        and isinstance(groups, list)
        and all(isinstance(name, str) for name in groups)
        and type(made_at) in (int, float)
    ):
        return None
    return IdentityClaim(ref, user_pk, username, tuple(groups), float(made_at))


def admitted(cookies: Mapping[str, str], session_key: str, cache: IdentityCache) -> IdentityClaim | None:
    """The claim that came with a handshake's cookies, if it may stand in for reading ``session_key``'s session now."""
    value = cookies.get(COOKIE_NAME)
    if not value:
        return None
    seconds = max_age()
    if seconds <= 0:
        return None
    claim = load(value)
    if claim is None:
        skipped = _unreadable.due(time.monotonic())
        if skipped is not None:
            logger.warning(
                "ignored %d identity claim(s) not made by this site (forged, or made with another SECRET_KEY); "
                "the handshake read the database",
                skipped,
            )
        return None
    now = time.time()
    made_at = claim.made_at - CLOCK_MARGIN
    if claim.ref != session_ref(session_key) or not now - seconds < made_at <= now:
        return None
    if not cache.admits(str(claim.user_pk), claim.ref, made_at):
        return None
    return claim


def user_of(claim: IdentityClaim) -> Any:
    """The site's user with the claim's primary key and username; its other fields are read if something asks for them."""
    model = auth_lookup.user_model()
    pk_field, names, username_attname = _claimed_columns(model)
    known = {pk_field.attname: pk_field.to_python(claim.user_pk), username_attname: claim.username}
    # Model.from_db leaves the fields it is not given deferred: a read of one loads it.
    return model.from_db(model._default_manager.db, names, [known[name] for name in names])


@functools.cache
def _claimed_columns(model: Any) -> tuple[Any, tuple[str, ...], str]:
    """The user model's primary key field, the columns a claim fills in (in the model's order), the username's column."""
    username_field: str = getattr(model, "USERNAME_FIELD")  # noqa: B009 - a str, whatever the stubs say
    username_attname = getattr(model._meta.get_field(username_field), "attname", username_field)
    pk_field = model._meta.pk
    names = tuple(field.attname for field in model._meta.concrete_fields if field.attname in (pk_field.attname, username_attname))
    return pk_field, names, username_attname


def read_at(claim: IdentityClaim) -> float:
    """When the claim's request read what it says, on ``time.monotonic()``'s clock (see :func:`~.identity.read_at`)."""
    return time.monotonic() - max(0.0, time.time() - claim.made_at)


# -- the pages' side -------------------------------------------------------------------------


class _Verdict(Enum):
    KEEP = "keep"  # nothing to do: no page, no session, or its claim will do
    TAKE_AWAY = "take away"  # a claim no visitor here may keep
    MAKE = "make"  # a logged-in page without a claim that will do


def _verdict(request: HttpRequest, response: HttpResponse, started: float, user: Any) -> _Verdict:
    """What a response to ``request`` does about its claim: no query of its own (a lazy ``user`` loads itself here)."""
    seconds = max_age()
    session = getattr(request, "session", None)
    if seconds <= 0 or user is None or session is None or not response.get("Content-Type", "").startswith("text/html"):
        return _Verdict.KEEP  # not a page, or no session or authentication middleware before this one
    present = request.COOKIES.get(COOKIE_NAME)
    key = session.session_key
    if (
        not user.is_authenticated
        or key is None
        or user.__class__ is not auth_lookup.user_model()  # (AuthenticationMiddleware's lazy object says its user's class)
        or django_settings.SESSION_ENGINE not in CACHED_ENGINES
    ):
        return _Verdict.TAKE_AWAY if present else _Verdict.KEEP
    if present:
        claim = load(present)
        same = claim is not None and claim.ref == session_ref(key) and str(claim.user_pk) == str(user.pk)
        if same and claim.made_at > started - seconds / 2:  # type: ignore[union-attr]
            return _Verdict.KEEP
    return _Verdict.MAKE


def _made(request: HttpRequest, user: Any, started: float) -> str:
    """A new claim's cookie value for ``request``'s session and ``user``: reads the user's group names."""
    claim = IdentityClaim(
        session_ref(request.session.session_key or ""), user.pk, user.get_username(), auth_lookup.group_names(user), started
    )
    return dump(claim)


def _apply(response: HttpResponse, verdict: _Verdict, value: str | None) -> None:
    """Set or delete the claim's cookie where the session cookie goes."""
    where = {"path": django_settings.SESSION_COOKIE_PATH, "domain": django_settings.SESSION_COOKIE_DOMAIN}
    if verdict is _Verdict.TAKE_AWAY:
        response.delete_cookie(COOKIE_NAME, samesite=django_settings.SESSION_COOKIE_SAMESITE, **where)
    elif verdict is _Verdict.MAKE and value is not None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=int(max_age()),
            secure=bool(django_settings.SESSION_COOKIE_SECURE),
            httponly=True,
            samesite=django_settings.SESSION_COOKIE_SAMESITE,
            **where,
        )


def issue(request: HttpRequest, response: HttpResponse, started: float) -> None:
    """Give ``response`` a claim for ``request``'s session if it is a page of a logged-in user and has none that will do.

    A claim that is less than half its age old and names the same session and
    user is kept (a page load then costs no query); a new one reads the user's
    group names. A page of a visitor who is no longer logged in takes the
    claim away.
    """
    user = getattr(request, "user", None)
    verdict = _verdict(request, response, started, user)
    _apply(response, verdict, _made(request, user, started) if verdict is _Verdict.MAKE else None)


async def aissue(request: HttpRequest, response: HttpResponse, started: float) -> None:
    """:func:`issue` in an async request: the user from ``request.auser()``, the groups query in Django's thread."""
    auser = getattr(request, "auser", None)
    if auser is None:  # Django before 5.0: request.user may still have to read the database
        await sync_to_async(issue)(request, response, started)
        return
    user = await auser()
    verdict = _verdict(request, response, started, user)
    value = await sync_to_async(_made)(request, user, started) if verdict is _Verdict.MAKE else None
    _apply(response, verdict, value)


class IdentityClaimMiddleware:
    """Gives the pages of a logged-in user a claim their websockets' handshakes may be let in on (see the module).

    Goes after Django's ``SessionMiddleware`` and ``AuthenticationMiddleware``
    in ``MIDDLEWARE``, on the site that serves the pages; sync and async
    (an ASGI site's requests stay on the event loop, but for the groups
    query of a new claim).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        started = time.time()  # before the view (or anything) read the session or the user
        response = self.get_response(request)
        issue(request, response, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        started = time.time()
        response = await self.get_response(request)
        await aissue(request, response, started)
        return response  # type: ignore[no-any-return]
