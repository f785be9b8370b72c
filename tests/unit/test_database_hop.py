"""Which handshakes hop to the worker's database greenlets: those that may read the database, and only those.

A logged-in session served from memory (the worker's identity cache, the
page's identity claim) is attached before the hop, and skips it; the tests
with sessions use the test site's SQLite database and count its queries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.core.handlers.wsgi import WSGIRequest
from django.db import connection
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from ws4redis_uwsgi.django import auth_lookup, identity_claim
from ws4redis_uwsgi.django.identity import identity_from_request, load_session_and_user
from ws4redis_uwsgi.django.identity_cache import IdentityCache, get_identity_cache
from ws4redis_uwsgi.django.identity_claim import COOKIE_NAME, IdentityClaim
from ws4redis_uwsgi.django.tokens import session_ref
from ws4redis_uwsgi.subscriber import RedisSubscriber
from ws4redis_uwsgi.wsgi_server import WebsocketWSGIServer


class OwnSubscriber(RedisSubscriber):
    """A site's WS4REDIS_SUBSCRIBER: it may read the database in set_pubsub_channels."""


@pytest.fixture(autouse=True)
def stock_set_up():
    """The test site has hooks and a subscriber class of its own: these tests start from the defaults."""
    stock = {"WS4REDIS_PROCESS_REQUEST": None, "WS4REDIS_ALLOWED_CHANNELS": None}
    with override_settings(**stock, WS4REDIS_SUBSCRIBER="ws4redis_uwsgi.subscriber.RedisSubscriber"):
        yield


def request(**headers: str) -> WSGIRequest:
    return RequestFactory().get("/ws/chat", QUERY_STRING="subscribe-broadcast", **headers)


class OwnServer(WebsocketWSGIServer):
    """A ws4redis site's subclass that authenticates its own way: it may read the database for anyone."""

    def process_request(self, request: WSGIRequest) -> None:
        super().process_request(request)


def test_an_anonymous_visitor_of_the_stock_set_up_reads_nothing() -> None:
    assert not WebsocketWSGIServer().may_read_database(request())
    assert not WebsocketWSGIServer().may_read_database(request(HTTP_COOKIE="csrftoken=abc"))


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_COOKIE": f"{settings.SESSION_COOKIE_NAME}=abc"},  # a session to look up
        {"HTTP_SEC_WEBSOCKET_PROTOCOL": "ws4redis.token.abc"},  # a token may name a user
    ],
)
def test_a_session_cookie_or_an_offered_protocol_may_read_it(headers: dict[str, str]) -> None:
    assert WebsocketWSGIServer().may_read_database(request(**headers))


@pytest.mark.parametrize(
    "setting",
    [
        {"WS4REDIS_PROCESS_REQUEST": "tests.unit.test_database_hop.OwnSubscriber"},
        {"WS4REDIS_ALLOWED_CHANNELS": "tests.unit.test_database_hop.OwnSubscriber"},
        {"WS4REDIS_SUBSCRIBER": "tests.unit.test_database_hop.OwnSubscriber"},
    ],
)
def test_a_site_hook_or_subscriber_may_read_it(setting: dict[str, str]) -> None:
    with override_settings(**setting):
        assert WebsocketWSGIServer().may_read_database(request())


def test_a_subclass_that_authenticates_its_own_way_may_read_it() -> None:
    assert OwnServer().may_read_database(request())


# -- logged-in sessions served from memory --------------------------------------------------


@pytest.fixture
def cache(site_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityCache]:
    """The worker's identity cache, hearing evictions as live authorization makes it once Redis confirmed its channel."""
    monkeypatch.setattr(identity_claim, "CLOCK_MARGIN", 0.0)
    with override_settings(WS4REDIS_IDENTITY_CACHE=60):
        cache = get_identity_cache()
        cache.live = lambda: True
        cache.hearing_from()
        time.sleep(0.01)  # claims made from now on were made after the cache started hearing
        yield cache


@pytest.fixture
def session_key(site_db: None) -> str:
    user = User.objects.create_user(f"hop-{User.objects.count()}", password="secret")
    user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in ("staff", "cooks")))
    store = SessionStore()
    store[auth.SESSION_KEY] = str(user.pk)
    store[auth.BACKEND_SESSION_KEY] = auth_lookup.MODEL_BACKEND
    store[auth.HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return store.session_key  # type: ignore[return-value]


def handshake(key: str, claim: str | None = None) -> WSGIRequest:
    cookie = f"{settings.SESSION_COOKIE_NAME}={key}" + (f"; {COOKIE_NAME}={claim}" if claim else "")
    return request(HTTP_COOKIE=cookie)


def served_without_a_query(server: WebsocketWSGIServer, request: WSGIRequest) -> Any:
    """``request`` skips the hop; its session, user and groups take no query there nor after (as subscribe_request reads them)."""
    with CaptureQueriesContext(connection) as queries:
        assert not server.may_read_database(request)
        load_session_and_user(request)
        identity = identity_from_request(request)
    assert len(queries) == 0
    return identity


def test_a_session_this_worker_read_a_moment_ago_skips_the_hop(cache: IdentityCache, session_key: str) -> None:
    server = WebsocketWSGIServer()
    first = handshake(session_key)
    assert server.may_read_database(first)  # read, and kept in the cache
    load_session_and_user(first)
    read = identity_from_request(first)
    again = handshake(session_key)
    assert served_without_a_query(server, again) == read
    assert again.ws4redis_source == "cache"  # type: ignore[attr-defined]
    assert read.groups == ("cooks", "staff")


def test_a_cached_session_whose_groups_were_not_read_still_hops(cache: IdentityCache, session_key: str) -> None:
    """The groups would be a query: read on a database greenlet, not in the websocket's own."""
    with override_settings(DATABASE_ROUTERS=["tests.unit.test_identity_served.Router"]):  # groups read apart
        first = handshake(session_key)
        load_session_and_user(first)
        identity_from_request(first, with_groups=False)
        again = handshake(session_key)
        assert WebsocketWSGIServer().may_read_database(again)
        assert not hasattr(again, "user")  # nothing attached: the database greenlet does it all


def test_a_page_s_claim_skips_the_hop_and_a_refused_one_does_not(cache: IdentityCache, session_key: str) -> None:
    server = WebsocketWSGIServer()
    read = handshake(session_key)
    load_session_and_user(read)
    expected = identity_from_request(read)
    cache.clear()
    cache.hearing_from()
    time.sleep(0.01)
    user = read.user  # type: ignore[attr-defined]
    made = IdentityClaim(session_ref(session_key), user.pk, user.username, ("cooks", "staff"), time.time())
    claimed = handshake(session_key, identity_claim.dump(made))
    assert served_without_a_query(server, claimed) == expected
    assert claimed.ws4redis_source == "claim"  # type: ignore[attr-defined]
    other = IdentityClaim(session_ref("another session"), user.pk, user.username, ("staff",), time.time())
    refused = handshake(session_key, identity_claim.dump(other))
    assert server.may_read_database(refused)
    assert not hasattr(refused, "user")


def test_a_refused_claim_is_decrypted_once_per_handshake(cache: IdentityCache, session_key: str, monkeypatch) -> None:
    """Looked at before the hop, and not again on the database greenlet, which reads the session instead."""
    loads: list[str] = []
    load = identity_claim.load
    monkeypatch.setattr(identity_claim, "load", lambda value: loads.append(value) or load(value))
    old = IdentityClaim(session_ref(session_key), 1, "someone", (), time.time() - 3600)
    refused = handshake(session_key, identity_claim.dump(old))
    assert WebsocketWSGIServer().may_read_database(refused)
    load_session_and_user(refused)
    assert refused.ws4redis_source == "database" and refused.user.is_authenticated  # type: ignore[attr-defined]
    assert len(loads) == 1
