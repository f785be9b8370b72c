"""ws4redis_uwsgi.testing's live server as a user's tests drive it: real redis-server, real uWSGI, real websockets.

The pytest fixtures come from the kit's plugin (enabled in tests/conftest.py,
as docs/testing.md tells users); the mixin is driven by a ``unittest.TestCase``
here (a ``TransactionTestCase`` would flush the site database the other
tests share; the demo's tests run it under Django's test runner).
"""

from __future__ import annotations

import unittest

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client

from ws4redis_uwsgi.publisher import RedisPublisher
from ws4redis_uwsgi.testing import HandshakeRefusedError, LiveServer, LiveWebsocketMixin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def live(ws4redis_live: LiveServer, site_db: None) -> LiveServer:
    return ws4redis_live


def test_assert_receives_passes_when_the_message_comes(live):
    with live.connect("kit", "subscribe-user&subscribe-broadcast", user="john") as john:
        RedisPublisher(facility="kit", users=["john"]).publish_message("hello john")
        assert john.assert_receives("hello john") == "hello john"
        RedisPublisher(facility="kit", broadcast=True).publish_message(b"\x00raw", binary=True)
        john.assert_receives(b"\x00raw")


def test_assert_receives_fails_clearly_when_nothing_comes(live):
    john = live.connect("kit", "subscribe-user", user="john")
    with pytest.raises(AssertionError) as failed:
        john.assert_receives("never sent", timeout=0.3)
    assert str(failed.value) == "websocket kit?subscribe-user as john: expected 'never sent' within 0.3 s, received nothing"


def test_assert_receives_fails_clearly_when_something_else_comes(live):
    anonymous = live.connect("kit")
    RedisPublisher(facility="kit", broadcast=True).publish_message("something else")
    with pytest.raises(AssertionError, match=r"^websocket kit\?subscribe-broadcast: expected 'this', received 'something else'$"):
        anonymous.assert_receives("this")


def test_assert_nothing_passes_for_others_and_fails_when_something_comes(live):
    john = live.connect("kit", ["subscribe-user"], user="john")
    mary = live.connect("kit", ["subscribe-user"], user="mary")
    RedisPublisher(facility="kit", users=["john"]).publish_message("for john only")
    john.assert_receives("for john only")
    mary.assert_nothing(within=0.3)
    RedisPublisher(facility="kit", users=["mary"]).publish_message("for mary")
    with pytest.raises(AssertionError, match=r"as mary: expected nothing within 5 s, received 'for mary'$"):
        mary.assert_nothing(within=5)  # returns as soon as the message comes


def test_a_django_test_clients_session_is_the_browser(live):
    browser = Client()
    browser.force_login(User.objects.get(username="mary"))
    staff = live.connect("kit", "subscribe-group&subscribe-session", client=browser)
    other_tab = live.connect("kit", "subscribe-group", client=browser)
    RedisPublisher(facility="kit", groups=["staff"]).publish_message("to staff")
    staff.assert_receives("to staff")
    RedisPublisher(facility="kit", sessions=[browser.session.session_key]).publish_message("to this browser")
    staff.assert_receives("to this browser")
    browser.logout()  # live authorization closes the websocket of the session that ended
    with pytest.raises(AssertionError, match=r"expected 'more', but the server closed the connection with 4001"):
        staff.assert_receives("more")
    assert staff.close_code == 4001
    assert other_tab.wait_closed() == 4001  # the messages meanwhile are dropped


def test_a_refused_handshake_says_its_status(live):
    with pytest.raises(HandshakeRefusedError) as refused:
        live.connect("kit", origin="http://evil.example")
    assert refused.value.status == 403


def test_reset_empties_the_private_redis(live):
    RedisPublisher(facility="kit", broadcast=True).publish_message("persisted", expire=60)
    live.connect("kit").assert_receives("persisted")
    live.reset()
    live.connect("kit").assert_nothing(within=0.3)


def test_a_user_inside_a_transaction_is_refused_with_the_fix(live):
    with transaction.atomic(), pytest.raises(RuntimeError, match=r"use TransactionTestCase"):
        live.connect("kit", user="john")


@pytest.mark.usefixtures("site_db")
class MixinTest(LiveWebsocketMixin, unittest.TestCase):
    """The mixin on a plain unittest.TestCase: its own servers for the class, a websocket per test."""

    def test_receives_what_a_view_would_publish(self):
        ws = self.websocket("mixin", "subscribe-user", user="john")
        RedisPublisher(facility="mixin", users=["john"]).publish_message("from the mixin")
        ws.assert_receives("from the mixin")
        with self.assertRaisesRegex(AssertionError, r"expected nothing within 5 s, received 'again'"):
            RedisPublisher(facility="mixin", users=["john"]).publish_message("again")
            ws.assert_nothing(within=5)

    def test_each_test_starts_with_an_empty_redis(self):
        RedisPublisher(facility="mixin", broadcast=True).publish_message("kept", expire=60)
        self.live_server.reset()
        self.websocket("mixin").assert_nothing(within=0.2)


def test_a_worker_that_cannot_start_raises_with_its_log_and_leaves_nothing_running(site_db):
    import redis

    server = LiveServer(settings_module="no_such_project.settings", startup_timeout=30)
    with pytest.raises(RuntimeError, match=r"(?s)exited with status \d+; its log ends:.*No module named 'no_such_project'"):
        server.start()
    assert server._worker is None and server._redis is None and server.log_path is None
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.redis_url, socket_timeout=1).ping()  # its redis-server was stopped too


def test_a_given_redis_is_used_and_never_flushed(redis_server, redis_client, site_db, monkeypatch):
    from django.test import override_settings

    monkeypatch.setenv("WS4REDIS_TESTING_REDIS_URL", redis_server.url)
    redis_client.set("kit:not-ours", "stays")
    with LiveServer() as server, override_settings(WS4REDIS_CONNECTION=server.redis_url):
        assert server.redis_url == redis_server.url
        page = server.connect("kit-given", "subscribe-broadcast&publish-broadcast&echo")
        page.send("sent by the page")  # echo: the page's own message comes back through that Redis
        page.assert_receives("sent by the page")
        server.reset()
        assert page.close_code == 1000  # reset closed the test's websockets (the server answered the close)
    assert redis_client.get("kit:not-ours") == b"stays"
    assert redis_server.ping()
