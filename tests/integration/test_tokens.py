"""Websocket tokens for clients without cookies: offered as a subprotocol, refused with 403 when they must be."""

from __future__ import annotations

import json
import time
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core import signing
from django.test import RequestFactory
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import SITE_ENV
from tests.integration.helpers import SITE_ORIGIN, facility, recv
from tests.servers import UwsgiServer, wait_for
from ws4redis_uwsgi.core.channels import MAX_FACILITY_LENGTH
from ws4redis_uwsgi.django.tokens import issue_token
from ws4redis_uwsgi.django.views import websocket_token
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def open_with(server, path: str, token: str):
    """A client with no cookie at all, offering the token the way ws4redis.js does."""
    return connect(f"{server.url}{path}", origin=SITE_ORIGIN, subprotocols=["ws4redis", f"ws4redis.token.{token}"])


def refusal(server, path: str, token: str) -> int:
    with pytest.raises(InvalidStatus) as refused, open_with(server, path, token):
        pass
    return refused.value.response.status_code


@pytest.fixture
def logging_server(redis_server, site_db, tmp_path):
    """A worker that writes uWSGI's line per request (the tests' other workers leave it out): what an access log holds."""
    server = UwsgiServer(SITE_ENV, cores=100, request_log=True, log_path=tmp_path / "uwsgi.log").start()
    yield server
    server.stop()


def test_a_token_lets_its_user_in_without_a_cookie_and_stays_out_of_the_logs(logging_server):
    """The token travels in a header because access logs record URLs: the log has the request, not the token."""
    server = logging_server
    fac = facility()
    token = issue_token(User.objects.get(username="john"))
    path = f"/ws/{fac}?subscribe-user&subscribe-group"
    with open_with(server, path, token) as ws:
        assert ws.subprotocol == "ws4redis"  # the server picks the one a browser needs answered
        RedisPublisher(facility=fac, users=["john"]).publish_message("for john", expire=0)
        assert recv(ws) == "for john"
        RedisPublisher(facility=fac, groups=["cooks"]).publish_message("for the cooks", expire=0)
        assert recv(ws) == "for the cooks"
    assert refusal(server, f"/ws/{fac}?subscribe-user", token[:-3] + "AAA") == 403  # forged
    # uWSGI writes a websocket's line when it ends: the request is there, the token (a header) is not.
    wait_for(lambda: f"GET {path}" in server.log_text(), 5, "the websocket's request line")
    assert token not in server.log_text()


def test_an_expired_token_is_refused(uwsgi_server, site_db):
    issued_long_ago = time.time() - 120  # WS4REDIS_TOKEN_MAX_AGE is 60 s
    with mock.patch.object(signing.time, "time", return_value=issued_long_ago):
        token = issue_token(User.objects.get(username="john"))
    assert refusal(uwsgi_server, f"/ws/{facility()}?subscribe-user", token) == 403
    assert "token expired" in uwsgi_server.log_text()


def logged_in_request(username: str | None):
    """A request as the site's session and authentication middleware leave it."""
    from django.contrib.auth import login
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.db import SessionStore

    request = RequestFactory().get("/ws4redis/token")
    request.session = SessionStore()
    request.user = AnonymousUser()
    if username is not None:
        login(request, User.objects.get(username=username), backend="django.contrib.auth.backends.ModelBackend")
    return request


def test_the_view_issues_tokens_to_logged_in_users_and_a_logout_ends_them(uwsgi_server, site_db):
    from django.contrib.auth import logout

    assert websocket_token(logged_in_request(None)).status_code == 403  # anonymous
    request = logged_in_request("mary")
    reply = websocket_token(request)
    assert reply.status_code == 200 and "no-store" in reply["Cache-Control"]
    body = json.loads(reply.content)
    token, expires_in = body["token"], body["expires_in"]
    assert expires_in == 60
    fac = facility()
    with open_with(uwsgi_server, f"/ws/{fac}?subscribe-user", token) as ws:
        RedisPublisher(facility=fac, users=["mary"]).publish_message("for mary", expire=0)
        assert recv(ws) == "for mary"
    logout(request)  # Django's user_logged_out: the session's tokens end too
    assert refusal(uwsgi_server, f"/ws/{fac}?subscribe-user", token) == 403
    assert "token of a session that logged out" in uwsgi_server.log_text()


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("facility=a:b", "invalid facility: facility contains a forbidden character"),
        ("facility=chat&facility=a%20b", "invalid facility: facility contains a forbidden character"),
        ("facility=", "invalid facility: missing facility"),
        ("facility=" + "x" * (MAX_FACILITY_LENGTH + 1), "invalid facility: facility too long"),
        ("audience=everyone", "'everyone' is not a valid Audience"),
    ],
    ids=["colon", "one-of-two", "empty", "too-long", "audience"],
)
def test_the_view_answers_400_and_why_to_what_no_token_may_name(site_db, query, reason):
    """A script that asks for a bad facility or audience learns why, instead of getting a token that opens nothing."""
    from django.test import Client

    browser = Client()
    browser.force_login(User.objects.get(username="john"))
    assert browser.get("/ws4redis/token?facility=chat&audience=user").status_code == 200  # the same user, asking well
    reply = browser.get(f"/ws4redis/token?{query}")
    assert reply.status_code == 400
    assert reply.json() == {"error": reason}


def test_a_password_change_ends_the_users_tokens(uwsgi_server, site_db):
    erin = User.objects.create_user(f"erin-{facility()}", password="old secret")
    try:
        token = issue_token(erin)
        erin.set_password("new secret")
        erin.save()
        assert refusal(uwsgi_server, f"/ws/{facility()}?subscribe-user", token) == 403
    finally:
        erin.delete()


def test_a_token_scoped_to_facilities_and_audiences_opens_nothing_else(uwsgi_server, site_db):
    fac, other = facility(), facility()
    token = issue_token(User.objects.get(username="john"), facilities=[fac], audiences=["broadcast"])
    with open_with(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", token) as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("allowed", expire=0)
        assert recv(ws) == "allowed"
    assert refusal(uwsgi_server, f"/ws/{other}?subscribe-broadcast", token) == 403
    assert refusal(uwsgi_server, f"/ws/{fac}?subscribe-user", token) == 403
    assert refusal(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&publish-user", token) == 403
    with pytest.raises(ValueError):
        issue_token(User.objects.get(username="john"), audiences=["everyone"])
