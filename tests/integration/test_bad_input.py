"""Bad input, each with its documented refusal, while a well-behaved client on the same worker keeps receiving.

After every bad request, a bystander subscribed on the same worker must
still receive a broadcast, and must receive nothing the bad client sent.
"""

from __future__ import annotations

import base64
import os
import socket
from datetime import timedelta

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.helpers import client, facility, recv
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BYSTANDER_FACILITY = facility()


@pytest.fixture(scope="module")
def bystander(uwsgi_server):
    """A client that publishes and subscribes on broadcast, like a chat page."""
    with client(uwsgi_server, f"/ws/{BYSTANDER_FACILITY}?subscribe-broadcast&publish-broadcast") as ws:
        yield ws


@pytest.fixture(autouse=True)
def bystander_keeps_receiving(bystander):
    """Before and after each test: the worker is up and the bystander got nothing else."""
    yield
    RedisPublisher(facility=BYSTANDER_FACILITY, broadcast=True).publish_message("still here", expire=0)
    assert recv(bystander) == "still here"


def raw_request(server, request: bytes) -> bytes:
    """Send raw bytes to the worker and return the status line it answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(request)
        return conn.recv(4096).split(b"\r\n", 1)[0]


def upgrade_request(path: str = f"/ws/{BYSTANDER_FACILITY}", **headers: str) -> bytes:
    fields = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Origin": "http://127.0.0.1",
    }
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = [f"GET {path}?subscribe-broadcast&publish-broadcast HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in fields.items() if v is not None and v != "<drop>"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-WebSocket-Key": "<drop>"}, b"400"),
        ({"Sec-WebSocket-Key": "not base64!"}, b"400"),
        ({"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}, b"400"),
        ({"Sec-WebSocket-Version": "8"}, b"426"),
        ({"Upgrade": "<drop>"}, b"426"),
        ({"Connection": "keep-alive"}, b"400"),
        ({"Origin": "https://evil.example"}, b"403"),
        ({"Origin": "<drop>"}, b"403"),
        ({"Origin": "null"}, b"403"),
    ],
)
def test_malformed_or_foreign_upgrade_is_refused(uwsgi_server, headers, status):
    assert raw_request(uwsgi_server, upgrade_request(**headers)).split(b" ")[1] == status


def test_post_upgrade_is_refused(uwsgi_server):
    request = upgrade_request().replace(b"GET ", b"POST ", 1)
    assert raw_request(uwsgi_server, request).split(b" ")[1] == b"400"


def test_http_1_0_upgrade_is_refused(uwsgi_server):
    """RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 request at least."""
    request = upgrade_request().replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    assert raw_request(uwsgi_server, request).split(b" ")[1] == b"400"


@pytest.mark.parametrize(
    "path", ["/ws/a:b", "/ws/a*", "/ws/a%3Fb", "/ws/a%5Bb", "/ws/a%0Ab", "/ws/a%00b", "/ws/%C3%28", "/ws/%FF"]
)
def test_unsafe_facility_is_refused(uwsgi_server, path):
    assert raw_request(uwsgi_server, upgrade_request(path=path)).split(b" ")[1] == b"400"


def test_oversized_message_closes_with_1009_and_reaches_nobody(uwsgi_server):
    with client(uwsgi_server, f"/ws/{BYSTANDER_FACILITY}?publish-broadcast") as bad:
        bad.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed):
            bad.recv(timeout=5)
    assert bad.close_code == CloseCode.MESSAGE_TOO_BIG


def test_flood_closes_with_1008(uwsgi_server, bystander):
    with client(uwsgi_server, f"/ws/{facility()}?publish-broadcast") as bad:
        for i in range(200):
            try:
                bad.send(f"flood {i}")
            except ConnectionClosed:
                break
        with pytest.raises(ConnectionClosed):
            while True:
                bad.recv(timeout=5)
    assert bad.close_code == CloseCode.POLICY_VIOLATION
    assert bad.close_reason == "rate limit exceeded"


def test_unknown_query_parameters_are_ignored(uwsgi_server):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&subscribe-everything&x=%00&_=123") as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("hello", expire=0)
        assert recv(ws) == "hello"


def expired_session_cookie() -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    john = User.objects.get(username="john")
    store = SessionStore()
    store.update(
        {
            SESSION_KEY: str(john.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: john.get_session_auth_hash(),
        }
    )
    store.set_expiry(-timedelta(minutes=1))
    store.save()
    return f"sessionid={store.session_key}"


@pytest.mark.parametrize("cookie", ["missing", "forged", "expired", "garbage"])
def test_bad_session_cookie_gets_no_user_audience(uwsgi_server, login, cookie):
    fac = facility()
    header = {
        "missing": None,
        "forged": "sessionid=abcdefghijklmnopqrstuvwxyz012345",
        "expired": expired_session_cookie() if cookie == "expired" else None,
        "garbage": "sessionid=%%%;;==; sessionid=",
    }[cookie]
    RedisPublisher(facility=fac, users=["john"]).publish_message("for john only", expire=30)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-user&subscribe-group&subscribe-session&subscribe-broadcast", header) as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("sentinel", expire=0)
        assert recv(ws) == "sentinel"
    with client(uwsgi_server, f"/ws/{fac}?subscribe-user", login("john")) as john:
        assert recv(john) == "for john only"  # the message was there to be stolen


def test_too_many_channels_is_refused_with_403(uwsgi_server, site_db):
    from django.contrib.auth.models import Group, User

    from tests.conftest import session_cookie

    crowd = User.objects.create_user(f"crowd-{facility()}")
    crowd.groups.add(*(Group.objects.create(name=f"g{i}-{crowd.username}") for i in range(101)))
    with pytest.raises(InvalidStatus) as refused:
        with client(uwsgi_server, f"/ws/{facility()}?subscribe-group", session_cookie(crowd.username)):
            pass
    assert refused.value.response.status_code == 403
    assert b"too many channels" in refused.value.response.body
