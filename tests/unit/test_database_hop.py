"""Which handshakes hop to the worker's database greenlets: those that may read the database, and only those."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.test import RequestFactory, override_settings

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
