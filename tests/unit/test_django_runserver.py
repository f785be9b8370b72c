"""The development server's websocket adapter against a wsproto client over a socket pair, and its refusals."""

from __future__ import annotations

import dataclasses
import io
import socket
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

from tests.unit.websocket_contract import *  # noqa: F403 - the tests every adapter passes
from tests.wsproto_client import Client, receive_soon
from ws4redis_uwsgi.checks import check_runserver
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.django_runserver import application
from ws4redis_uwsgi.exceptions import WebSocketError
from ws4redis_uwsgi.server.development import WsprotoWebsocket, WsprotoWebsocketServer


@pytest.fixture
def pair() -> Iterator[tuple[WsprotoWebsocket, Client]]:
    server_sock, client_sock = socket.socketpair()
    client_sock.settimeout(5)
    websocket = WsprotoWebsocket(server_sock)
    yield websocket, Client(client_sock)
    server_sock.close()
    client_sock.close()


def test_text_arrives_as_utf8_bytes_and_binary_as_bytes(pair):
    websocket, client = pair
    client.send(TextMessage(data="grüße"), BytesMessage(data=b"\xff\x00"))
    assert receive_soon(websocket) == "grüße".encode()
    assert receive_soon(websocket) == b"\xff\x00"
    assert websocket.receive() is None


def test_a_fragmented_message_arrives_whole(pair):
    websocket, client = pair
    client.send(TextMessage(data="one ", message_finished=False))
    assert websocket.receive() is None  # a fragment is not a message
    client.send(TextMessage(data="two", message_finished=True))
    assert receive_soon(websocket) == b"one two"


def test_a_ping_is_answered(pair):
    websocket, client = pair
    client.send(Ping(payload=b"hi"))
    assert websocket.receive() is None
    assert client.events() == [Pong(payload=b"hi")]


def test_the_server_closes_with_code_and_reason(pair):
    websocket, client = pair
    client.send(CloseConnection(code=1000))  # answered ahead, so close() need not linger
    websocket.close(CloseCode.INTERNAL_ERROR, "server error")
    assert websocket.closed
    (event,) = client.events()
    assert (event.code, event.reason) == (CloseCode.INTERNAL_ERROR, "server error")
    with pytest.raises(WebSocketError):
        websocket.send(b"too late")


def test_a_message_over_the_limit_closes_with_1009(pair):
    websocket, client = pair
    websocket.limits = dataclasses.replace(websocket.limits, max_message_size=1000)
    client.send(BytesMessage(data=b"x" * 600, message_finished=False), BytesMessage(data=b"x" * 600))
    client.send(CloseConnection(code=1000))
    assert websocket.receive() is None
    assert websocket.closed
    (event,) = client.events()
    assert event.code == CloseCode.MESSAGE_TOO_BIG


def test_the_limit_is_ws4redis_max_message_size_as_under_uwsgi(pair):
    websocket, _ = pair
    assert websocket.limits.max_message_size == 64 * 1024  # the default; uWSGI's 1 MiB is larger


def test_invalid_utf8_in_a_text_frame_closes_with_1007(pair):
    websocket, client = pair
    client.sock.sendall(bytes((0x81, 0x82, 0, 0, 0, 0)) + b"\xff\xfe")  # masked text frame, invalid UTF-8
    client.send(CloseConnection(code=1000))
    client.sock.shutdown(socket.SHUT_WR)  # wsproto parses nothing after the bad frame: the end of stream ends the wait
    assert websocket.receive() is None
    assert websocket.closed
    (event,) = client.events()
    assert event.code == CloseReason.INVALID_FRAME_PAYLOAD_DATA


def test_a_vanished_client_raises(pair):
    websocket, client = pair
    client.sock.close()
    with pytest.raises(WebSocketError):
        receive_soon(websocket)


def test_a_silent_client_is_pinged_then_dropped(pair):
    websocket, client = pair
    websocket.limits = dataclasses.replace(websocket.limits, ping_freq=0.05, pong_tolerance=0.05)  # uWSGI's rule, faster
    time.sleep(0.06)
    assert websocket.receive() is None
    assert isinstance(client.events()[0], Ping)
    time.sleep(0.06)
    with pytest.raises(WebSocketError):
        websocket.receive()


@pytest.mark.parametrize("send_buffer", [64 * 1024, 128 * 1024])
def test_the_send_buffer_is_capped_as_under_uwsgi(send_buffer):
    server_sock, client_sock = socket.socketpair()
    try:
        with override_settings(WS4REDIS_SEND_BUFFER=send_buffer):
            WsprotoWebsocket(server_sock)
        # Linux doubles what it is given, for its bookkeeping.
        assert server_sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) in (send_buffer, 2 * send_buffer)
    finally:
        server_sock.close()
        client_sock.close()


def test_the_handshake_answers_with_the_accept_token():
    server_sock, client_sock = socket.socketpair()
    with server_sock, client_sock:
        sent: list = []

        def start_response(status, headers):
            sent.append((status, dict(headers)))
            return lambda data: None

        environ = {
            "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
            "ws4redis_uwsgi.socket": server_sock,
            "ws4redis_uwsgi.rfile": server_sock.makefile("rb"),
        }
        websocket = WsprotoWebsocketServer().upgrade_websocket(environ, start_response)
        assert sent == [
            (
                "101 Switching Protocols",
                {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
            )
        ]
        assert websocket.receive() is None


# -- the application under a server that does not hand over its socket ---------------------------------


def call(environ: dict) -> tuple[str, bytes]:
    """The application called as a WSGI server calls it, ``close()`` included (PEP 3333)."""
    statuses: list[str] = []
    response = application(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        body = b"".join(response)
    finally:
        # Django sends request_finished from close(): without it, live authorization
        # would keep this process's later session changes for a request that never ends.
        close = getattr(response, "close", None)
        if close is not None:
            close()
    return statuses[0], body


UPGRADE = {
    "REQUEST_METHOD": "GET",
    "QUERY_STRING": "subscribe-broadcast",
    "HTTP_HOST": "127.0.0.1",
    "HTTP_ORIGIN": "http://127.0.0.1",
    "HTTP_UPGRADE": "websocket",
    "HTTP_CONNECTION": "Upgrade",
    "HTTP_SEC_WEBSOCKET_VERSION": "13",
    "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "80",
    "wsgi.url_scheme": "http",
}


def test_without_the_socket_a_websocket_is_refused_with_500():
    status, body = call({**UPGRADE, "PATH_INFO": "/ws/chat"})
    assert status.startswith("500 ")
    assert b"cannot serve websockets" in body


def test_without_the_socket_refusals_stay_as_under_uwsgi():
    assert call({**UPGRADE, "PATH_INFO": "/ws/a:b"})[0].startswith("400 ")
    plain = {k: v for k, v in UPGRADE.items() if k not in ("HTTP_UPGRADE", "HTTP_CONNECTION")}
    assert call({**plain, "PATH_INFO": "/ws/chat"})[0].startswith("426 ")


def test_pages_go_to_django():
    status, body = call({**UPGRADE, "PATH_INFO": "/page/", "wsgi.input": io.BytesIO()})
    assert status.startswith("200 ")
    assert body == b"a page of the test site"


# -- the system check ---------------------------------------------------------------------------------------


def test_no_warning_when_runserver_is_this_packages():
    assert check_runserver() == []


def test_no_warning_for_another_application():
    with override_settings(WSGI_APPLICATION="mysite.wsgi.application"):
        assert check_runserver() == []


def test_warning_when_another_app_provides_runserver(monkeypatch):
    from django.core import management

    monkeypatch.setattr(management, "get_commands", lambda: {"runserver": "django.contrib.staticfiles"})
    (warning,) = check_runserver()
    assert warning.id == "ws4redis_uwsgi.W001"
    assert "django.contrib.staticfiles" in warning.msg
    assert "above 'django.contrib.staticfiles'" in warning.hint
