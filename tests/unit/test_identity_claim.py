"""A page's identity claim (ws4redis_uwsgi.django.identity_claim): made by the middleware, taken by a handshake.

Real sessions and users in the test site's SQLite database; queries are
counted on the connection. The identity cache is made to hear evictions, as
a worker's live authorization makes it once Redis confirmed the control
channel, and its clock is set to start hearing before the claims are made.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser, Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils.functional import SimpleLazyObject

from ws4redis_uwsgi.django import auth_lookup, identity_claim
from ws4redis_uwsgi.django.identity import identity_from_request, load_session_and_user, read_at
from ws4redis_uwsgi.django.identity_cache import IdentityCache, get_identity_cache
from ws4redis_uwsgi.django.identity_claim import COOKIE_NAME, IdentityClaim, IdentityClaimMiddleware
from ws4redis_uwsgi.django.tokens import session_ref

#: The clocks' margin in these tests (a second in the package): the claims here are made a moment after the cache starts hearing.
MARGIN = 0.05


@pytest.fixture
def cache(site_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityCache]:
    """The worker's cache, hearing evictions; it keeps nothing itself (a setting change would empty it, and its clock)."""
    monkeypatch.setattr(identity_claim, "CLOCK_MARGIN", MARGIN)
    with override_settings(WS4REDIS_IDENTITY_CACHE=0):
        cache = get_identity_cache()
        cache.live = lambda: True
        start_hearing(cache)
        yield cache


def start_hearing(cache: IdentityCache) -> None:
    """What live authorization says once Redis confirmed its channel: claims made more than the margin later may be admitted."""
    cache.hearing_from()
    time.sleep(MARGIN * 1.5)


@pytest.fixture
def user(site_db: None) -> User:
    user = User.objects.create_user(f"claimed-{User.objects.count()}", password="secret", email="a@example.org")
    user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in ("staff", "cooks")))
    return user


def login_session(user: User) -> SessionStore:
    store = SessionStore()
    store[auth.SESSION_KEY] = str(user.pk)
    store[auth.BACKEND_SESSION_KEY] = auth_lookup.MODEL_BACKEND
    store[auth.HASH_SESSION_KEY] = user.get_session_auth_hash()
    store["cart"] = ["apple"]
    store.save()
    return store


def page(session: SessionStore | None, user: object, cookies: dict[str, str] | None = None, response: HttpResponse | None = None):
    """A page request through the middleware, after Django's session and authentication middleware: its response's cookie."""
    request = RequestFactory().get("/page/")
    request.COOKIES.update(cookies or {})
    if session is not None:
        request.session = session
    request.user = SimpleLazyObject(lambda: user)  # as AuthenticationMiddleware gives it
    middleware = IdentityClaimMiddleware(lambda request: response if response is not None else HttpResponse("<p>page</p>"))
    return middleware(request).cookies.get(COOKIE_NAME)


def claim_cookie(session: SessionStore, user: User) -> str:
    morsel = page(session, user)
    assert morsel is not None
    return morsel.value


class Handshake:
    def __init__(self, cookies: dict[str, str]) -> None:
        self.COOKIES = cookies


def handshake(session_key: str, claim: str | None) -> tuple[Handshake, int]:
    """What a websocket handshake with these cookies reads: the request, and the queries it took."""
    cookies = {settings.SESSION_COOKIE_NAME: session_key}
    if claim is not None:
        cookies[COOKIE_NAME] = claim
    request = Handshake(cookies)
    with CaptureQueriesContext(connection) as queries:
        load_session_and_user(request)
        request.identity = identity_from_request(request)  # type: ignore[attr-defined]
    return request, len(queries)


# -- the cookie's value --------------------------------------------------------------------


def test_a_claim_reads_back_as_made_and_not_once_changed_or_made_with_another_key():
    claim = IdentityClaim("ref", 7, "alice", ("cooks", "staff"), 1234.5)
    value = identity_claim.dump(claim)
    assert identity_claim.load(value) == claim
    middle = len(value) // 2
    changed = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]
    assert identity_claim.load(changed) is None
    assert identity_claim.load("garbage") is None
    with override_settings(SECRET_KEY="another key"):
        assert identity_claim.load(value) is None
    with override_settings(SECRET_KEY="another key", SECRET_KEY_FALLBACKS=[settings.SECRET_KEY]):
        assert identity_claim.load(value) == claim  # a key rotation keeps the claims of the day


def test_a_primary_key_that_is_not_an_integer_travels_as_a_string():
    key = uuid.uuid4()
    claim = identity_claim.load(identity_claim.dump(IdentityClaim("ref", key, "alice", (), 1234.5)))  # type: ignore[arg-type]
    assert claim is not None and claim.user_pk == str(key)


def test_a_value_of_this_site_of_another_shape_is_no_claim():
    box = identity_claim._box()
    for data in ('{"a": 1}', '["ref", 1, "alice", "staff", 1.0]', '["ref", [1], "alice", [], 1.0]', "[1, 2]", "not json"):
        assert identity_claim.load(box.encrypt(data.encode()).decode()) is None


def test_the_cookie_tells_its_reader_nothing_of_the_user_or_the_groups():
    value = identity_claim.dump(IdentityClaim("ref", 7, "alice", ("suspected-fraud",), 1234.5))
    readable = value + base64.urlsafe_b64decode(value).decode("latin-1")
    assert "alice" not in readable and "suspected-fraud" not in readable


@pytest.mark.parametrize(
    ("claim", "recheck", "seconds"),
    [(30, 60, 30.0), (120, 60, 60.0), (30, 0, 30.0), (0, 60, 0.0), (None, 60, 0.0), (10_000, 0, 600.0)],
)
def test_a_claim_lives_its_seconds_never_longer_than_the_recheck_or_ten_minutes(claim, recheck, seconds):
    with override_settings(WS4REDIS_IDENTITY_CLAIM=claim, WS4REDIS_SESSION_RECHECK=recheck):
        assert identity_claim.max_age() == seconds


# -- the pages' side -----------------------------------------------------------------------


def test_a_logged_in_page_gets_a_claim_of_its_session_user_and_groups_in_an_httponly_cookie(cache, user):
    session = login_session(user)
    before = time.time()
    morsel = page(session, user)
    assert morsel is not None
    assert morsel["httponly"] and morsel["path"] == "/" and morsel["max-age"] == 30
    assert morsel["samesite"] == settings.SESSION_COOKIE_SAMESITE
    claim = identity_claim.load(morsel.value)
    assert claim is not None
    assert (claim.ref, claim.user_pk, claim.username, claim.groups) == (
        session_ref(session.session_key),
        user.pk,
        user.username,
        ("cooks", "staff"),
    )
    assert before - 0.001 <= claim.made_at <= time.time()


def test_a_claim_is_given_again_only_when_it_is_half_its_age_old_or_of_another_session(cache, user):
    session = login_session(user)
    value = claim_cookie(session, user)
    with CaptureQueriesContext(connection) as queries:
        assert page(session, user, {COOKIE_NAME: value}) is None  # a fresh one: kept, no query
    assert len(queries) == 0
    old = identity_claim.load(value)
    assert old is not None
    aged = identity_claim.dump(IdentityClaim(old.ref, old.user_pk, old.username, old.groups, time.time() - 16))
    assert page(session, user, {COOKIE_NAME: aged}) is not None
    other = login_session(user)
    assert page(other, user, {COOKIE_NAME: value}) is not None


def test_no_claim_for_visitors_not_logged_in_nor_for_what_is_not_a_page_and_a_logout_takes_it_away(cache, user):
    session = login_session(user)
    value = claim_cookie(session, user)
    assert page(session, user, response=JsonResponse({"a": 1})) is None
    assert page(SessionStore(), AnonymousUser()) is None
    gone = page(SessionStore(), AnonymousUser(), {COOKIE_NAME: value})
    assert gone is not None and gone.value == "" and gone["max-age"] == 0
    assert page(None, user) is None  # no session middleware in front of it
    with override_settings(SESSION_ENGINE="tests.unit.test_identity_claim"):
        assert page(session, user) is None  # an engine whose ends may go unheard
        assert page(session, user, {COOKIE_NAME: value}).value == ""  # type: ignore[union-attr]
    with override_settings(WS4REDIS_IDENTITY_CLAIM=0):
        assert page(session, user) is None


# -- the websockets' side ------------------------------------------------------------------


def test_a_handshake_with_its_pages_claim_reads_nothing_and_gets_what_the_database_would_give(cache, user):
    session = login_session(user)
    claim = claim_cookie(session, user)
    read, queries = handshake(session.session_key, None)
    assert queries == 2  # the session; the user with its groups
    claimed, queries = handshake(session.session_key, claim)
    assert queries == 0 and claimed.ws4redis_source == "claim" and read.ws4redis_source == "database"  # type: ignore[attr-defined]
    assert claimed.identity == read.identity  # type: ignore[attr-defined]
    assert claimed.identity.groups == ("cooks", "staff")  # type: ignore[attr-defined]
    assert claimed.user.pk == user.pk and claimed.user.is_authenticated  # type: ignore[attr-defined]
    assert time.monotonic() - 1 < read_at(claimed) <= time.monotonic()
    # What a hook may read beyond it comes from the database: the session, the user's other fields.
    with CaptureQueriesContext(connection) as queries:
        assert claimed.session["cart"] == ["apple"]  # type: ignore[attr-defined]
        assert claimed.user.email == "a@example.org"  # type: ignore[attr-defined]
    assert len(queries) == 2


def test_a_claim_of_another_session_an_old_one_or_one_before_a_change_of_the_user_is_not_taken(cache, user):
    session, other = login_session(user), login_session(user)
    claim = claim_cookie(session, user)
    assert handshake(other.session_key, claim)[1] == 2  # another session's claim: the cookie decides
    made = identity_claim.load(claim)
    assert made is not None
    old = identity_claim.dump(IdentityClaim(made.ref, made.user_pk, made.username, made.groups, time.time() - 31))
    assert handshake(session.session_key, old)[1] == 2
    ahead = identity_claim.dump(IdentityClaim(made.ref, made.user_pk, made.username, made.groups, time.time() + 5))
    assert handshake(session.session_key, ahead)[1] == 2  # from the future: another host's clock far off
    time.sleep(MARGIN * 1.5)
    cache.evict_user(str(user.pk))  # live authorization: the user's groups changed
    request, queries = handshake(session.session_key, claim)
    assert queries == 2 and request.identity.groups == ("cooks", "staff")  # type: ignore[attr-defined]


def test_a_claim_is_not_taken_while_the_worker_may_miss_evictions_nor_for_a_session_gone_since(cache, user):
    session = login_session(user)
    claim = claim_cookie(session, user)
    cache.live = lambda: False
    assert handshake(session.session_key, claim)[1] == 2
    cache.live = lambda: True
    assert handshake(session.session_key, claim)[1] == 2  # made before the worker heard evictions again
    time.sleep(MARGIN * 1.5)
    fresh = claim_cookie(session, user)
    assert handshake(session.session_key, fresh)[1] == 0
    cache.evict_ref(session_ref(session.session_key))  # the session ended
    session.delete()
    request, queries = handshake(session.session_key, fresh)
    assert queries == 1 and not request.user.is_authenticated  # type: ignore[attr-defined]


def test_a_forged_claim_is_logged_and_the_handshake_reads_the_database(cache, user, caplog):
    session = login_session(user)
    claim = claim_cookie(session, user)
    identity_claim._unreadable.reported_at = float("-inf")
    request, queries = handshake(session.session_key, claim[:-3] + "abc")
    assert queries == 2 and request.user.pk == user.pk  # type: ignore[attr-defined]
    assert "not made by this site" in caplog.text


def test_the_cookie_jar_of_a_browser_sends_the_claim_back_as_it_was_given(cache, user):
    session = login_session(user)
    morsel = page(session, user)
    assert morsel is not None
    jar = SimpleCookie()
    jar.load(morsel.OutputString())
    assert handshake(session.session_key, jar[COOKIE_NAME].value)[1] == 0


# -- the pages' side in an async (ASGI) site -------------------------------------------------


def async_page(session: SessionStore, user: object, cookies: dict[str, str] | None = None, auser: bool = True):
    """A page request of an async site through the middleware: its response's claim cookie, and the queries it took."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncRequestFactory

    request = AsyncRequestFactory().get("/page/")
    request.COOKIES.update(cookies or {})
    request.session = session
    if auser:

        async def read_user() -> object:  # as AuthenticationMiddleware gives it (Django 5.0 and later)
            return user

        request.auser = read_user
    else:
        request.user = SimpleLazyObject(lambda: user)

    async def view(request) -> HttpResponse:
        return HttpResponse("<p>page</p>")

    middleware = IdentityClaimMiddleware(view)
    assert middleware.is_async
    with CaptureQueriesContext(connection) as queries:
        response = async_to_sync(middleware)(request)
    return response.cookies.get(COOKIE_NAME), len(queries)


@pytest.mark.parametrize("auser", [True, False], ids=["auser", "no auser"])
def test_an_async_site_gives_the_same_claims_and_reads_only_for_a_new_one(cache, user, auser):
    session = login_session(user)
    morsel, queries = async_page(session, user, auser=auser)
    assert morsel is not None and queries == 1  # the groups
    claim = identity_claim.load(morsel.value)
    assert claim is not None and claim.groups == ("cooks", "staff") and claim.ref == session_ref(session.session_key)
    assert async_page(session, user, {COOKIE_NAME: morsel.value}, auser=auser) == (None, 0)  # fresh: kept
    assert handshake(session.session_key, morsel.value)[1] == 0
    gone, _ = async_page(SessionStore(), AnonymousUser(), {COOKIE_NAME: morsel.value}, auser=auser)
    assert gone is not None and gone.value == ""
