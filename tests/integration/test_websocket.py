"""The compatibility contract end to end: real redis-server, real uWSGI, real websocket clients.

"Nothing else arrived" is checked with a sentinel: a broadcast published
afterwards through the same Redis must be the next message a client sees,
since one worker receives everything over one ordered connection.

The tests whose handshakes read sessions, users and groups take
``site_server``: they run with the site on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv
from tests.servers import UwsgiServer
from ws4redis_uwsgi.core import envelope
from ws4redis_uwsgi.publisher import RedisPublisher
from ws4redis_uwsgi.redis_store import SELF

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def assert_next_is_sentinel(ws, fac: str) -> None:
    RedisPublisher(facility=fac, broadcast=True).publish_message("sentinel", expire=0)
    assert recv(ws) == "sentinel"


# -- each audience, live and persisted -------------------------------------------------

AUDIENCES = {
    # audience: (publisher kwargs, who should receive, who should not)
    "broadcast": ({"broadcast": True}, ["john", "mary", None], []),
    "user": ({"users": ["john"]}, ["john"], ["mary", None]),
    "group": ({"groups": ["staff"]}, ["mary"], ["john", None]),
}


@pytest.mark.parametrize("audience", sorted(AUDIENCES))
def test_audience_live(site_server, login, audience):
    fac = facility()
    kwargs, receivers, others = AUDIENCES[audience]
    query = f"?subscribe-{audience}&subscribe-broadcast"
    with (
        client(site_server, f"/ws/{fac}{query}", login("john")) as john,
        client(site_server, f"/ws/{fac}{query}", login("mary")) as mary,
        client(site_server, f"/ws/{fac}{query}", login(None)) as anon,
    ):
        sockets = {"john": john, "mary": mary, None: anon}
        RedisPublisher(facility=fac, **kwargs).publish_message(f"to {audience}", expire=0)
        for name in receivers:
            assert recv(sockets[name]) == f"to {audience}"
        for name in others:
            assert_next_is_sentinel(sockets[name], fac)


@pytest.mark.parametrize("audience", sorted(AUDIENCES))
def test_audience_persisted(site_server, login, audience):
    fac = facility()
    kwargs, receivers, others = AUDIENCES[audience]
    RedisPublisher(facility=fac, **kwargs).publish_message(f"kept for {audience}", expire=30)
    for name in receivers:
        with client(site_server, f"/ws/{fac}?subscribe-{audience}", login(name)) as ws:
            assert recv(ws) == f"kept for {audience}"
    for name in others:
        with client(site_server, f"/ws/{fac}?subscribe-{audience}&subscribe-broadcast", login(name)) as ws:
            assert_next_is_sentinel(ws, fac)


def test_session_audience_reaches_only_that_browser(site_server, login):
    fac = facility()
    johns_browser, johns_other_browser = login("john"), login("john")
    session_key = johns_browser.split("=", 1)[1]
    RedisPublisher(facility=fac, sessions=[session_key]).publish_message("persisted for session", expire=30)
    query = f"/ws/{fac}?subscribe-session&subscribe-broadcast"
    with client(site_server, query, johns_browser) as mine, client(site_server, query, johns_other_browser) as other:
        assert recv(mine) == "persisted for session"
        RedisPublisher(facility=fac, sessions=[session_key]).publish_message("live for session", expire=0)
        assert recv(mine) == "live for session"
        assert_next_is_sentinel(other, fac)


def test_forged_session_cookie_is_anonymous(site_server, login):
    fac = facility()
    RedisPublisher(facility=fac, users=["john"]).publish_message("secret", expire=30)
    with client(
        site_server, f"/ws/{fac}?subscribe-user&subscribe-session&subscribe-broadcast", "sessionid=forgedkey1234567890"
    ) as ws:
        assert_next_is_sentinel(ws, fac)


def test_fetch_message_and_self(site_server, login):
    """A view publishes to SELF and reads back what is persisted for the request."""
    from django.contrib.auth.models import User
    from django.test import RequestFactory

    fac = facility()
    request = RequestFactory().get("/")
    request.user = User.objects.get(username="mary")
    request.session = None
    RedisPublisher(facility=fac, groups=[SELF], request=request).publish_message("for my groups", expire=30)
    publisher = RedisPublisher()
    assert publisher.fetch_message(request, fac, "group") == b"for my groups"
    assert publisher.fetch_message(request, fac, "user") is None
    with client(site_server, f"/ws/{fac}?subscribe-group", login("john")) as john:  # john is a cook too
        assert recv(john) == "for my groups"


def test_groups_are_read_when_the_socket_opens(site_server, login):
    from django.contrib.auth.models import Group, User

    fac = facility()
    cookie = login("john")  # john logs in while not yet a baker
    bakers = Group.objects.create(name=f"bakers-{fac}")
    User.objects.get(username="john").groups.add(bakers)
    try:
        with client(site_server, f"/ws/{fac}?subscribe-group", cookie) as ws:
            RedisPublisher(facility=fac, groups=[bakers.name]).publish_message("fresh bread", expire=0)
            assert recv(ws) == "fresh bread"
    finally:
        bakers.delete()  # john is shared by the other tests: a cook only


# -- publishing from clients -------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "sender", "receiver", "outsider"),
    [
        ("broadcast", "john", None, None),
        ("user", "john", "john", "mary"),
        ("group", "john", "mary", None),  # john and mary are both cooks
    ],
)
def test_client_publishes_to_its_own_audience(site_server, login, audience, sender, receiver, outsider):
    fac = facility()
    sub = f"/ws/{fac}?subscribe-{audience}&subscribe-broadcast"
    receiver_cookie = login(receiver) if receiver != sender else None
    with client(site_server, f"/ws/{fac}?publish-{audience}", login(sender)) as pub:
        cookie = receiver_cookie or login(sender)
        with client(site_server, sub, cookie) as rec, client(site_server, sub, login(outsider)) as out:
            pub.send(f"{audience} from {sender}")
            assert recv(rec) == f"{audience} from {sender}"
            if audience != "broadcast":
                assert_next_is_sentinel(out, fac)
    # A published message is persisted like one from a view.
    with client(site_server, sub, cookie) as late:
        assert recv(late) == f"{audience} from {sender}"


def test_client_publishes_to_its_session(site_server, login):
    fac = facility()
    cookie = login("mary")
    with (
        client(site_server, f"/ws/{fac}?subscribe-session", cookie) as tab1,
        client(site_server, f"/ws/{fac}?publish-session", cookie) as tab2,
    ):
        tab2.send("between my tabs")
        assert recv(tab1) == "between my tabs"


def test_anonymous_client_cannot_publish_to_users(site_server, login):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-user&subscribe-group&subscribe-broadcast", login("john")) as john:
        with client(site_server, f"/ws/{fac}?publish-user&publish-group", login(None)) as anon:
            anon.send("spoofed")
        assert_next_is_sentinel(john, fac)


# -- echo ----------------------------------------------------------------------------


def test_echo_on_returns_own_message(uwsgi_server):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast&echo") as ws:
        ws.send("hello me")
        assert recv(ws) == "hello me"


def test_echo_off_is_decided_by_identity_not_text(uwsgi_server):
    fac = facility()
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast") as sender,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as other,
    ):
        sender.send("same words")
        assert recv(other) == "same words"
        # The same text from someone else must still reach the sender.
        RedisPublisher(facility=fac, broadcast=True).publish_message("same words", expire=0)
        assert recv(sender) == "same words"
        assert recv(other) == "same words"


# -- text and binary ------------------------------------------------------------------


def test_text_stays_text_and_binary_stays_binary(uwsgi_server):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        publisher.publish_message("grüße", expire=0)
        assert recv(ws) == "grüße"
        publisher.publish_message(b"\xff\x00\xfe", expire=0)
        assert recv(ws) == b"\xff\x00\xfe"
        publisher.publish_message(b"utf-8 but binary", expire=0, binary=True)
        assert recv(ws) == b"utf-8 but binary"
        publisher.publish_message(b"bytes are text when UTF-8", expire=0)
        assert recv(ws) == "bytes are text when UTF-8"


def test_publish_returns_receivers_and_expire_zero_keeps_earlier(uwsgi_server, redis_client):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    assert publisher.publish_message("first", expire=30) == 0  # nobody listens yet
    assert publisher.publish_message("second", expire=0) == 0
    # The persisted value carries the message id (history is on); fetch_message unwraps it.
    assert envelope.decode(redis_client.get(f"test:broadcast:{fac}")).payload == b"first"
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        assert recv(ws) == "first"
        assert publisher.publish_message("third", expire=0) == 1  # one worker subscribed
        assert recv(ws) == "third"
    assert 0 < redis_client.ttl(f"test:broadcast:{fac}") <= 30


# -- refusals before the upgrade ----------------------------------------------------------


def test_allowed_channels_hook_refuses_with_403(site_server, login):
    with pytest.raises(InvalidStatus) as refused:
        with client(site_server, "/ws/staff-only?subscribe-broadcast", login("john")):
            pass
    assert refused.value.response.status_code == 403
    with client(site_server, "/ws/staff-only?subscribe-broadcast", login("mary")) as ws:
        assert_next_is_sentinel(ws, "staff-only")


def test_allowed_channels_hook_narrows_publishing(uwsgi_server):
    with (
        client(uwsgi_server, "/ws/read-only?subscribe-broadcast") as reader,
        client(uwsgi_server, "/ws/read-only?publish-broadcast") as writer,
    ):
        writer.send("should not pass")
        assert_next_is_sentinel(reader, "read-only")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ws/a:b", 400),
        ("/ws/a*", 400),
        ("/ws/a%3Fb", 400),
        ("/ws/a%0Ab", 400),
        ("/ws/a%00b", 400),
        ("/ws/%FF", 400),
        ("/ws/", 400),
    ],
)
def test_bad_facility_is_refused(uwsgi_server, path, status):
    with pytest.raises(InvalidStatus) as refused:
        with client(uwsgi_server, path + "?subscribe-broadcast"):
            pass
    assert refused.value.response.status_code == status


def test_plain_http_request_gets_426(uwsgi_server):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{uwsgi_server.port}/ws/chat?subscribe-broadcast", timeout=5)
    assert refused.value.code == 426
    assert b"upgrade" in refused.value.read()


# -- heartbeat and ordering ---------------------------------------------------------------


def test_heartbeat_is_answered_and_never_published(uwsgi_server):
    fac = facility()
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast") as ws,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as other,
    ):
        ws.send("--heartbeat--")
        assert recv(ws) == "--heartbeat--"
        assert_next_is_sentinel(other, fac)


def test_fifty_messages_back_to_back_arrive_in_order(uwsgi_server):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        for i in range(50):
            publisher.publish_message(f"message {i}", expire=0)
        assert [recv(ws) for _ in range(50)] == [f"message {i}" for i in range(50)]


def test_fifty_messages_from_a_client_arrive_in_order(uwsgi_server):
    fac = facility()
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as reader,
        client(uwsgi_server, f"/ws/{fac}?publish-broadcast") as writer,
    ):
        for i in range(50):
            writer.send(f"message {i}")
        assert [recv(reader) for _ in range(50)] == [f"message {i}" for i in range(50)]


# -- the replaceable parts: WS4REDIS_SUBSCRIBER and WS4REDIS_PROCESS_REQUEST ---------------


def test_custom_subscriber_adds_a_channel_other_programs_publish_to(uwsgi_server, redis_client):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&notices") as ws:
        # Another program (not Django) publishes a raw message with plain Redis.
        assert redis_client.publish("test:site-notices", "maintenance at noon") == 1
        assert recv(ws) == "maintenance at noon"
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        redis_client.publish("test:site-notices", "not for you")
        assert_next_is_sentinel(ws, fac)


def test_process_request_hook_authenticates_by_token(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-user&token=token-mary") as ws:
        RedisPublisher(facility=fac, users=["mary"]).publish_message("hello mary", expire=0)
        assert recv(ws) == "hello mary"


# -- the stock set-up (no site hooks): anonymous handshakes skip the database greenlets --------


@pytest.fixture
def stock_server(redis_server, site_db, tmp_path):
    env = {**SITE_ENV, "WS4REDIS_TEST_REDIS": redis_server.url, "WS4REDIS_TEST_STOCK": "1"}
    server = UwsgiServer(env, cores=50, log_path=tmp_path / "uwsgi.log").start()
    yield server
    server.stop()


def test_stock_set_up_serves_visitors_without_a_cookie_and_logged_in_users(stock_server, login):
    fac = facility()
    RedisPublisher(facility=fac, broadcast=True).publish_message("kept", expire=30)
    path = f"/ws/{fac}?subscribe-broadcast&subscribe-user"
    with client(stock_server, path) as anon, client(stock_server, path, login("john")) as john:
        assert recv(anon) == "kept" and recv(john) == "kept"
        RedisPublisher(facility=fac, users=["john"]).publish_message("for john", expire=0)
        assert recv(john) == "for john"
        RedisPublisher(facility=fac, broadcast=True).publish_message("live", expire=0)
        assert recv(anon) == "live" and recv(john) == "live"
