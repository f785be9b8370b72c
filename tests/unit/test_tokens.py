"""Websocket tokens and the subprotocol that carries them: values in, values out (the database for the user)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIRequest
from django.test import RequestFactory

from ws4redis_uwsgi.core.handshake import chosen_protocol, offered_protocols, offered_token
from ws4redis_uwsgi.django.tokens import TokenError, issue_token, read_token, session_ref
from ws4redis_uwsgi.server.loop import WebsocketWSGIServer

#: What RFC 7230 allows in a token, which a subprotocol is: no ':', '/', '=' or spaces.
TCHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@pytest.mark.parametrize(
    ("header", "protocols", "chosen", "token"),
    [
        (None, [], None, None),
        ("", [], None, None),
        ("ws4redis", ["ws4redis"], "ws4redis", None),
        ("ws4redis, ws4redis.token.abc~def", ["ws4redis", "ws4redis.token.abc~def"], "ws4redis", "abc~def"),
        (" chat ,ws4redis.token.x ", ["chat", "ws4redis.token.x"], None, "x"),
        ("ws4redis.token.", ["ws4redis.token."], None, None),
    ],
)
def test_the_subprotocol_header(header, protocols, chosen, token):
    assert offered_protocols(header) == protocols
    assert chosen_protocol(protocols) == chosen
    assert offered_token(protocols) == token


def test_a_token_is_a_valid_subprotocol_and_reads_back_its_claims(site_db):
    john = User.objects.get(username="john")
    token = issue_token(john, session_key="k3y", facilities=["chat", "news"], audiences=["user", "broadcast"])
    assert TCHARS.fullmatch(f"ws4redis.token.{token}")  # a browser refuses anything else
    assert "k3y" not in token  # the session is named by a digest, not its key
    claims = read_token(token)
    assert claims.user == john
    assert claims.session_ref == session_ref("k3y")
    assert claims.facilities == {"chat", "news"} and claims.audiences == {"user", "broadcast"}
    assert claims.allows("chat", ["subscribe-user", "publish-broadcast"]) is None
    assert claims.allows("other", ["subscribe-user"]) == "token not valid for this facility"
    assert claims.allows("chat", ["subscribe-group"]) == "token not valid for subscribe-group"
    unscoped = read_token(issue_token(john))
    assert unscoped.session_ref is None and unscoped.allows("anything", ["subscribe-session"]) is None


@pytest.mark.parametrize("garbage", ["", "x", "a~b~c", "ws4redis", "eyJ1IjoiMSJ9~1qXb~" + "A" * 43])
def test_garbage_is_an_invalid_token(site_db, garbage):
    with pytest.raises(TokenError, match="invalid token"):
        read_token(garbage)


def test_issuing_for_nobody_or_outside_the_channels_is_refused(site_db):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(ValueError):
        issue_token(AnonymousUser())
    with pytest.raises(ValueError):
        issue_token(User.objects.get(username="john"), facilities=["a:b"])
    with pytest.raises(ValueError):
        issue_token(User.objects.get(username="john"), audiences=["everyone"])


@pytest.mark.parametrize("facility", ["chat", "café", "日本"])
def test_a_token_for_a_facility_outside_ascii_lets_its_websocket_in(site_db, facility):
    token = issue_token(User.objects.get(username="john"), facilities=[facility])
    environ = RequestFactory().get("/ws/x", {"subscribe-user": ""}, HTTP_SEC_WEBSOCKET_PROTOCOL=f"ws4redis.token.{token}").environ
    environ["PATH_INFO"] = f"/ws/{facility}".encode().decode("latin-1")  # as a WSGI server hands it over
    request = WSGIRequest(environ)  # Django decodes path_info
    server = WebsocketWSGIServer()
    server.process_request(request)
    assert server.process_subscriptions(request) == (["subscribe-user"], False)


def test_a_tokens_user_and_groups_are_read_in_one_query_as_the_orm_has_them(site_db):
    """Every token handshake is a first visit (no identity cache): its reads are the compiled ones."""
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from ws4redis_uwsgi.django.identity import groups_read_with, identity_from_request

    john = User.objects.create_user(f"token-reader-{User.objects.count()}")
    john.groups.set(Group.objects.filter(name__in=["staff", "cooks"]))
    token = issue_token(john)
    with CaptureQueriesContext(connection) as queries:
        claims = read_token(token)
    assert len(queries) == 1 and "JOIN" in queries[0]["sql"]
    assert claims.user == john and claims.user.get_username() == john.username and claims.groups == ("cooks", "staff")
    request = RequestFactory().get("/ws/chat")
    request.session, request.user = None, claims.user
    groups_read_with(request, claims.user, claims.groups)
    with CaptureQueriesContext(connection) as queries:
        assert identity_from_request(request).groups == ("cooks", "staff")
    assert len(queries) == 0
    User.objects.filter(pk=john.pk).update(is_active=False)
    with pytest.raises(TokenError, match="gone or inactive"):
        read_token(token)
