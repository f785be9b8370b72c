"""Handshake validation, heartbeat recognition and close frames."""

import base64

import pytest

from ws4redis_uwsgi.core.close_codes import CloseCode, close_frame, restart_reason, restart_spread, retry_hint, violation
from ws4redis_uwsgi.core.handshake import WEBSOCKET_VERSION, check_upgrade_request
from ws4redis_uwsgi.core.inbound import is_heartbeat
from ws4redis_uwsgi.core.text import loggable
from ws4redis_uwsgi.exceptions import HandshakeError, UpgradeRequiredError

KEY = base64.b64encode(b"0123456789abcdef").decode()  # 16 bytes, as RFC 6455 asks


def environ(**changes):
    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ws/chat",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
    }
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"HTTP_UPGRADE": "WebSocket"},
        {"HTTP_UPGRADE": "h2c, websocket"},
        {"HTTP_CONNECTION": "keep-alive, Upgrade"},
        {"HTTP_CONNECTION": "upgrade"},
        {"HTTP_SEC_WEBSOCKET_VERSION": " 13 "},
        {"HTTP_SEC_WEBSOCKET_KEY": f" {KEY} "},
        {"HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ=="},  # the key of RFC 6455 section 1.3
        {"REQUEST_METHOD": None},  # GET is assumed
        {"SERVER_PROTOCOL": "HTTP/1.1"},
        {"SERVER_PROTOCOL": "HTTP/2.0"},
    ],
)
def test_a_valid_upgrade_request_passes(changes):
    assert check_upgrade_request(environ(**changes)) is None


@pytest.mark.parametrize(
    ("changes", "error", "status"),
    [
        ({"HTTP_UPGRADE": None}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"HTTP_UPGRADE": ""}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"HTTP_UPGRADE": "h2c"}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"HTTP_UPGRADE": None, "REQUEST_METHOD": "POST"}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"REQUEST_METHOD": "POST"}, HandshakeError, "400 Bad Request"),
        ({"REQUEST_METHOD": "HEAD"}, HandshakeError, "400 Bad Request"),
        ({"HTTP_CONNECTION": None}, HandshakeError, "400 Bad Request"),
        ({"HTTP_CONNECTION": "keep-alive"}, HandshakeError, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": None}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "13, 8"}, UpgradeRequiredError, "426 Upgrade Required"),
        ({"HTTP_SEC_WEBSOCKET_KEY": None}, HandshakeError, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": ""}, HandshakeError, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "not base64!!"}, HandshakeError, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ"}, HandshakeError, "400 Bad Request"),  # missing padding
        ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"short").decode()}, HandshakeError, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"x" * 17).decode()}, HandshakeError, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "ключ"}, HandshakeError, "400 Bad Request"),
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, HandshakeError, "400 Bad Request"),  # RFC 6455 4.1: HTTP/1.1 at least
    ],
)
def test_broken_upgrade_requests_are_refused_with_the_right_status(changes, error, status):
    with pytest.raises(HandshakeError) as excinfo:
        check_upgrade_request(environ(**changes))
    assert type(excinfo.value) is error
    assert excinfo.value.status == status
    assert str(excinfo.value)  # a one-line reason for the response body


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"HTTP_UPGRADE": None}, "websocket upgrade required"),
        ({"REQUEST_METHOD": "POST"}, "websocket upgrade must use GET"),
        ({"HTTP_CONNECTION": "close"}, "Connection header lacks 'upgrade'"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "12"}, "unsupported websocket version"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "AAAA"}, "invalid Sec-WebSocket-Key"),
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, "websocket upgrade needs HTTP/1.1"),
    ],
)
def test_refusal_reasons(changes, reason):
    with pytest.raises(HandshakeError, match=f"^{reason}$"):
        check_upgrade_request(environ(**changes))


def test_the_server_speaks_version_13():
    assert WEBSOCKET_VERSION == "13"


@pytest.mark.parametrize(
    ("message", "heartbeat", "expected"),
    [
        (b"--heartbeat--", "--heartbeat--", True),
        (b"--heartbeat--", None, False),
        (b"", None, False),
        (b"--heartbeat-- ", "--heartbeat--", False),
        (b"--HEARTBEAT--", "--heartbeat--", False),
        (b"hello", "--heartbeat--", False),
        ("pïng".encode(), "pïng", True),
        ("pïng".encode("latin-1"), "pïng", False),
    ],
)
def test_is_heartbeat(message, heartbeat, expected):
    assert is_heartbeat(message, heartbeat) is expected


# -- close codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (CloseCode.NORMAL_CLOSURE, 1000),
        (CloseCode.GOING_AWAY, 1001),
        (CloseCode.PROTOCOL_ERROR, 1002),
        (CloseCode.UNSUPPORTED_DATA, 1003),
        (CloseCode.POLICY_VIOLATION, 1008),
        (CloseCode.MESSAGE_TOO_BIG, 1009),
        (CloseCode.INTERNAL_ERROR, 1011),
        (CloseCode.SERVICE_RESTART, 1012),
        (CloseCode.TRY_AGAIN_LATER, 1013),
    ],
)
def test_close_code_values(code, value):
    assert code == value
    assert CloseCode(value) is code


@pytest.mark.parametrize(
    ("code", "reason", "frame"),
    [
        (CloseCode.NORMAL_CLOSURE, "", b"\x88\x02\x03\xe8"),
        (CloseCode.INTERNAL_ERROR, "", b"\x88\x02\x03\xf3"),
        (CloseCode.TRY_AGAIN_LATER, "too slow", b"\x88\x0a\x03\xf5too slow"),
        (CloseCode.POLICY_VIOLATION, "ü", b"\x88\x04\x03\xf0\xc3\xbc"),
    ],
)
def test_close_frame_bytes(code, reason, frame):
    assert close_frame(code, reason) == frame


def test_close_frame_defaults_to_no_reason():
    assert close_frame(CloseCode.NORMAL_CLOSURE) == b"\x88\x02\x03\xe8"


@pytest.mark.parametrize("reason", ["x" * 123, "x" * 124, "x" * 500])
def test_a_long_reason_is_truncated_to_a_125_byte_payload(reason):
    frame = close_frame(CloseCode.INTERNAL_ERROR, reason)
    assert frame[0] == 0x88  # FIN + close opcode, unmasked
    assert frame[1] == 125 == len(frame) - 2
    assert frame[2:4] == b"\x03\xf3"
    assert frame[4:] == b"x" * 123


@pytest.mark.parametrize(
    "reason",
    ["é" * 100, "x" + "é" * 100, "€" * 60, "🎉" * 40, "x" * 122 + "é"],
    ids=["2-byte", "2-byte-shifted", "3-byte", "4-byte", "2-byte-at-the-cut"],
)
def test_a_truncated_reason_stays_valid_utf8(reason):
    # RFC 6455 section 5.5.1: the reason is UTF-8; a client fails the connection
    # (1007) on a close reason that is not, so truncation must not split a character.
    frame = close_frame(CloseCode.NORMAL_CLOSURE, reason)
    assert frame[1] == len(frame) - 2 <= 125
    text = frame[4:].decode("utf-8")
    assert reason.startswith(text)
    assert len(frame[4:]) > 123 - 4  # only the split character is dropped


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("/ws/chat", "/ws/chat"),
        (
            "/ws/x\n2026-01-01 00:00:00,000 CRITICAL ws4redis_uwsgi: FORGED",
            "/ws/x\\n2026-01-01 00:00:00,000 CRITICAL ws4redis_uwsgi: FORGED",
        ),
        ("/ws/a\rb\x00c\x1b[31m", "/ws/a\\rb\\x00c\\x1b[31m"),
        ("/ws/\u2028next", "/ws/\\u2028next"),
        ("/ws/grüße", "/ws/grüße"),
        (None, "None"),
    ],
)
def test_request_data_in_log_lines_cannot_start_a_line(text, logged):
    assert loggable(text) == logged
    assert "\n" not in loggable(text) and "\r" not in loggable(text)


def test_long_request_data_is_cut_in_log_lines():
    assert loggable("x" * 1000) == "x" * 200 + "..."


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1002, (CloseCode.PROTOCOL_ERROR, "protocol error")),
        (1007, (CloseCode.INVALID_PAYLOAD, "invalid UTF-8")),
        (1009, (CloseCode.MESSAGE_TOO_BIG, "message too big")),
        (3999, (CloseCode.PROTOCOL_ERROR, "protocol error")),  # a code the server does not send
    ],
)
def test_a_violation_closes_with_its_code_and_one_reason_for_every_adapter(code, expected):
    assert violation(code) == expected


@pytest.mark.parametrize(
    ("websockets", "rate", "seconds"),
    [(10_000, 2000, 5.0), (20, 10, 2.0), (0, 2000, 0.0), (10_000, None, 0.0)],
)
def test_a_restarting_worker_spreads_its_clients_over_the_time_it_takes_to_serve_them(websockets, rate, seconds):
    assert restart_spread(websockets, rate) == seconds


def test_a_restart_reason_carries_the_wait_in_milliseconds_and_reads_back():
    assert restart_reason(1.2344) == "server restart, retry in 1234 ms"
    assert retry_hint(restart_reason(1.2344)) == 1.234
    assert restart_reason(0) == "server restart"  # as before, for a worker that held no websocket or gives no hint
    assert retry_hint("server restart") is None
    assert retry_hint(restart_reason(5000)) == 999.999  # six digits at most, as ws4redis.js reads them
    assert len(close_frame(CloseCode.SERVICE_RESTART, restart_reason(999.999))) <= 127  # a control frame's payload
