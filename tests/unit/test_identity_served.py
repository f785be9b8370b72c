"""load_session_and_user and identity_from_request with the identity cache: what is served, what is never kept.

Real sessions in the test site's database (SQLite and PostgreSQL, ``db_backend``);
queries are counted on the connection. The cache is made to hear evictions, as a
worker's live authorization makes it once Redis confirmed the control channel.
"""

from __future__ import annotations

import sys
import time
import types

import pytest
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from ws4redis_uwsgi.bus.subscriber import Grant
from ws4redis_uwsgi.core.channels import ClientRequest
from ws4redis_uwsgi.django import auth_lookup
from ws4redis_uwsgi.django.identity import identity_from_request, load_session_and_user, read_at
from ws4redis_uwsgi.django.identity_cache import IdentityCache, get_identity_cache
from ws4redis_uwsgi.django.tokens import session_ref
from ws4redis_uwsgi.server.authority import Authority


class Request:
    def __init__(self, cookie: str | None) -> None:
        self.COOKIES = {settings.SESSION_COOKIE_NAME: cookie} if cookie else {}


@pytest.fixture
def cache(db_backend: str) -> IdentityCache:
    cache = get_identity_cache()  # after db_backend: switching databases forgets the process's resources
    cache.live = lambda: True
    return cache


@pytest.fixture
def user(db_backend: str) -> User:
    user = User.objects.create_user(f"cached-{User.objects.count()}", password="secret")
    user.groups.add(*Group.objects.filter(name__in=["staff", "cooks"]))
    return user


def login_session(user: User, store_class: type = SessionStore, cart: bool = True) -> str:
    store = store_class()
    store[auth.SESSION_KEY] = str(user.pk)
    store[auth.BACKEND_SESSION_KEY] = auth_lookup.MODEL_BACKEND
    store[auth.HASH_SESSION_KEY] = user.get_session_auth_hash()
    if cart:
        store["cart"] = ["apple"]
    store.save()
    return store.session_key


def handshake(cookie: str | None, with_groups: bool = True) -> tuple[Request, int]:
    """What a websocket handshake reads: the request, and the queries it took."""
    request = Request(cookie)
    with CaptureQueriesContext(connection) as queries:
        load_session_and_user(request)
        request.identity = identity_from_request(request, with_groups=with_groups)  # type: ignore[attr-defined]
    return request, len(queries)


def test_a_session_that_reconnects_is_served_without_a_query_each_websocket_its_own_copy(cache, user):
    cookie = login_session(user)
    first, queries = handshake(cookie)
    assert queries == 2  # the session; the user with its groups
    second, queries = handshake(cookie)
    assert queries == 0
    assert second.identity == first.identity  # type: ignore[attr-defined]
    assert second.identity.groups == ("cooks", "staff")  # type: ignore[attr-defined]
    assert second.user.pk == user.pk and second.session.session_key == cookie  # type: ignore[attr-defined]
    # One websocket's hooks change their request's session and user: no other websocket sees it.
    second.session["cart"].append("pear")  # type: ignore[attr-defined]
    second.user.first_name = "changed"  # type: ignore[attr-defined]
    third, queries = handshake(cookie)
    assert queries == 0
    assert third.session["cart"] == ["apple"] and third.user.first_name == ""  # type: ignore[attr-defined]
    assert third.user is not second.user and third.session is not second.session  # type: ignore[attr-defined]


def test_a_flat_session_served_again_is_each_websocket_s_own_too(cache, user):
    """Only strings and numbers in it (the usual session): copied more cheaply, as separate all the same."""
    cookie = login_session(user, cart=False)
    first, _ = handshake(cookie)
    first.session["theme"] = "dark"  # type: ignore[attr-defined]
    first.session[auth.HASH_SESSION_KEY] = "changed"  # type: ignore[attr-defined]
    second, queries = handshake(cookie)
    assert queries == 0
    assert "theme" not in second.session and second.session[auth.HASH_SESSION_KEY] == user.get_session_auth_hash()  # type: ignore[attr-defined]
    second.session["theme"] = "light"  # type: ignore[attr-defined]
    assert handshake(cookie)[0].session.get("theme") is None  # type: ignore[attr-defined]


class Router:
    """A database router that sends nothing anywhere: enough for the lookups to keep the groups' query apart."""


@pytest.mark.parametrize(("routers", "groups_queries"), [([], 0), (["tests.unit.test_identity_served.Router"], 1)])
def test_groups_come_with_the_user_unless_a_router_may_read_them_elsewhere_and_are_kept(cache, user, routers, groups_queries):
    cookie = login_session(user)
    with override_settings(DATABASE_ROUTERS=routers):
        assert handshake(cookie, with_groups=False)[1] == 2
        assert handshake(cookie, with_groups=False)[1] == 0
        request, queries = handshake(cookie)  # the first to ask for them: read then, with a router
        assert queries == groups_queries and request.identity.groups == ("cooks", "staff")  # type: ignore[attr-defined]
        assert handshake(cookie)[1] == 0


def test_anonymous_unknown_and_forged_cookies_are_never_kept(cache, db_backend):
    anonymous = SessionStore()
    anonymous["cart"] = 3
    anonymous.save()
    for cookie in (anonymous.session_key, "x" * 32, "forged-" + "y" * 25):
        for _ in range(2):
            request, queries = handshake(cookie)
            assert not request.user.is_authenticated and queries == 1  # type: ignore[attr-defined]
    assert len(cache) == 0


def test_an_ended_session_found_by_the_next_miss_is_not_served(cache, user):
    cookie = login_session(user)
    handshake(cookie)
    cache.clear()  # live authorization heard it ended
    SessionStore(cookie).delete()
    request, queries = handshake(cookie)
    assert not request.user.is_authenticated and queries == 1  # type: ignore[attr-defined]
    assert len(cache) == 0


def test_nothing_is_served_while_evictions_may_be_missed(cache, user):
    cookie = login_session(user)
    handshake(cookie)
    cache.live = lambda: False
    assert handshake(cookie)[1] == 2


@pytest.mark.parametrize("off", [0, None])
def test_the_setting_turns_it_off(cache, user, off):
    cookie = login_session(user)
    with override_settings(WS4REDIS_IDENTITY_CACHE=off):
        assert handshake(cookie)[1] == 2
        assert handshake(cookie)[1] == 2
    assert len(cache) == 0


def test_a_session_engine_of_the_sites_own_is_not_cached(cache, user, monkeypatch):
    """It may end sessions in ways live authorization never hears of."""
    monkeypatch.setitem(sys.modules, "site_sessions", types.SimpleNamespace(SessionStore=SessionStore))
    cookie = login_session(user)
    with override_settings(SESSION_ENGINE="site_sessions"):
        assert handshake(cookie)[1] == 2
        assert handshake(cookie)[1] == 2
    assert len(cache) == 0


def test_signed_cookie_sessions_are_served_too(cache, user):
    from django.contrib.sessions.backends.signed_cookies import SessionStore as CookieStore

    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        cookie = login_session(user, CookieStore)
        assert handshake(cookie)[1] == 1  # the user with its groups
        request, queries = handshake(cookie)
        assert queries == 0 and request.user.pk == user.pk  # type: ignore[attr-defined]


def test_a_hook_that_gives_the_request_another_user_gets_that_users_groups(cache, user):
    """A WS4REDIS_PROCESS_REQUEST that calls load_session_and_user, then decides who the request is."""
    cookie = login_session(user)
    handshake(cookie)
    other = User.objects.create_user(f"other-{User.objects.count()}")
    request = Request(cookie)
    load_session_and_user(request)
    request.user = other  # type: ignore[attr-defined]
    assert identity_from_request(request).groups == ()
    assert handshake(cookie)[0].identity.groups == ("cooks", "staff")  # type: ignore[attr-defined]


class Watched:
    """What live authorization needs of a websocket: its grant, and being told that its session ended or its groups changed."""

    session_ended = False
    reidentified: tuple[str, ...] | None = None

    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    def end_session(self) -> None:
        self.session_ended = True

    def reidentify(self, *, groups: tuple[str, ...] | None = None, session_key: str | None = None) -> None:
        self.reidentified = groups
        if groups is not None:
            self.grant.groups = groups


def watched(user: User, cookie: str, channel: str, groups: tuple[str, ...] = ()) -> tuple[Authority, Watched, Grant]:
    """A worker's live authorization watching one websocket of ``cookie``'s session (what watch() does, without the hub)."""
    grant = Grant(
        user_pk=str(user.pk),
        username=user.username,
        session_key=cookie,
        ref=session_ref(cookie),
        wanted=ClientRequest((channel,)),
        groups=groups,
    )
    authority, websocket = Authority(), Watched(grant)
    authority._index(websocket, grant)  # type: ignore[arg-type]
    return authority, websocket, grant


def test_the_periodic_recheck_evicts_a_session_it_finds_gone_and_keeps_one_still_valid(cache, user):
    """What no signal says (here a raw DELETE) is found by the re-check of open websockets, which forgets what was kept."""
    cookie = login_session(user)
    handshake(cookie)
    authority, websocket, grant = watched(user, cookie, "subscribe-user")
    before = time.monotonic()
    authority._look_at(grant.user_pk)
    assert not websocket.session_ended and handshake(cookie)[1] == 0  # still valid: still kept
    assert grant.read_at >= before  # the next round counts from this look
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {SessionStore.get_model_class()._meta.db_table} WHERE session_key = %s", [cookie])
    assert handshake(cookie)[1] == 0  # nothing told the worker yet
    authority._look_at(grant.user_pk)
    assert websocket.session_ended
    request, queries = handshake(cookie)
    assert not request.user.is_authenticated and queries == 1  # type: ignore[attr-defined]


def test_the_recheck_of_a_group_websocket_reads_its_user_with_the_groups_and_follows_what_no_signal_said(cache, user):
    cookie = login_session(user)
    authority, websocket, grant = watched(user, cookie, "subscribe-group", ("cooks", "staff"))
    with CaptureQueriesContext(connection) as queries:
        authority._look_at(grant.user_pk)
    assert len(queries) == 2  # the session; the user with its groups
    assert not websocket.session_ended and websocket.reidentified is None
    staff = Group.objects.get(name="staff")
    with connection.cursor() as cursor:  # a raw DELETE: no signal
        cursor.execute(
            f"DELETE FROM {User.groups.through._meta.db_table} WHERE user_id = %s AND group_id = %s", [user.pk, staff.pk]
        )
    authority._look_at(grant.user_pk)
    assert websocket.reidentified == ("cooks",) and not websocket.session_ended


def test_a_websocket_let_in_from_the_cache_is_as_fresh_as_the_cache_s_read(cache, user):
    """The periodic re-check counts from the database read, not from the handshake a cache entry served."""
    cookie = login_session(user)
    before = time.monotonic()
    first = handshake(cookie)[0]
    assert before <= read_at(first) <= time.monotonic()
    time.sleep(0.01)
    second, queries = handshake(cookie)
    assert queries == 0 and read_at(second) == read_at(first)
    assert read_at(Request(None)) > read_at(first)  # nothing cached: read now


def grant_read_at(user_pk: str, when: float) -> Grant:
    return Grant(user_pk=user_pk, username=user_pk, session_key=None, ref=None, wanted=ClientRequest(()), groups=(), read_at=when)


def test_a_periodic_round_looks_at_users_with_a_websocket_read_before_its_bound():
    authority = Authority()
    for user_pk, when in (("fresh", 100.0), ("stale", 40.0), ("both", 100.0), ("both", 10.0), ("edge", 55.0)):
        grant = grant_read_at(user_pk, when)
        authority._index(Watched(grant), grant)  # type: ignore[arg-type]
    assert sorted(authority.due(read_before=55.0)) == ["both", "stale"]
    assert sorted(authority.due(read_before=55.5)) == ["both", "edge", "stale"]
    assert authority.due(read_before=0.0) == []
