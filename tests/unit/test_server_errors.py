"""A failure inside the websocket loop closes with 1011, never putting the exception on the wire; a broken rule, with its code."""

from __future__ import annotations

from django.test import RequestFactory

from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.core.inbound import Verdict
from ws4redis_uwsgi.server.adapter import close_for_rule
from ws4redis_uwsgi.subscriber import RedisSubscriber
from ws4redis_uwsgi.wsgi_server import WebsocketWSGIServer


class RecordingWebsocket:
    """The adapter interface, recording what the server does to it."""

    def __init__(self) -> None:
        self.closed = False
        self.sent: list[bytes] = []
        self.close_calls: list[tuple[int, str]] = []

    def get_file_descriptor(self) -> int:
        return -1

    def receive(self) -> bytes | None:
        return None

    def send(self, message: bytes, binary: bool | None = None) -> None:
        self.sent.append(message)

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.close_calls.append((int(code), reason))

    def dispose(self) -> None:
        pass

    def direct_writer(self, wake):
        return None


class FailingSubscriber(RedisSubscriber):
    """A site's WS4REDIS_SUBSCRIBER that subscribes to nothing and fails while sending the persisted messages."""

    released = False

    def set_pubsub_channels(self, request, channels) -> None:
        pass

    def send_persisted_messages(self, websocket) -> None:
        raise RuntimeError("database password is hunter2")

    def release(self) -> None:
        super().release()
        FailingSubscriber.released = True


class NoWait:
    def wait(self, timeout):
        return True

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


class Server(WebsocketWSGIServer):
    Subscriber = FailingSubscriber  # type: ignore[assignment]

    def __init__(self, websocket: RecordingWebsocket) -> None:
        super().__init__()
        self.websocket = websocket

    def upgrade_websocket(self, environ, start_response):
        return self.websocket

    def make_waiter(self, websocket):
        return NoWait()


def test_an_exception_in_the_loop_closes_with_1011_without_its_text(caplog):
    environ = (
        RequestFactory()
        .get(
            "/ws/chat",
            {"subscribe-broadcast": ""},
            HTTP_UPGRADE="websocket",
            HTTP_CONNECTION="Upgrade",
            HTTP_SEC_WEBSOCKET_KEY="dGhlIHNhbXBsZSBub25jZQ==",
            HTTP_SEC_WEBSOCKET_VERSION="13",
            HTTP_ORIGIN="http://127.0.0.1",
        )
        .environ
    )
    websocket = RecordingWebsocket()
    assert Server(websocket)(environ, lambda *args: None) == []
    assert websocket.close_calls == [(1011, "")]
    assert not any(b"hunter2" in frame for frame in websocket.sent)
    assert FailingSubscriber.released
    assert "hunter2" in caplog.text  # the operator sees it in the log, the client does not


def test_a_broken_rule_closes_with_its_code_and_one_log_line_detail_in_the_log_only(caplog):
    plain, detailed = RecordingWebsocket(), RecordingWebsocket()
    close_for_rule(plain, *Verdict.TOO_BIG.value)
    close_for_rule(detailed, CloseCode.PROTOCOL_ERROR, "protocol error", detail="bad opcode 3")
    assert plain.close_calls == [(1009, "message too big")]
    assert detailed.close_calls == [(1002, "protocol error")]
    assert [r.getMessage() for r in caplog.records] == [
        "closing websocket (1009, message too big)",
        "closing websocket (1002, protocol error): bad opcode 3",
    ]
