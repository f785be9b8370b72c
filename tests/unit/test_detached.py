"""The detached uWSGI websocket (ws4redis_uwsgi.server.detached) against a wsproto client over a socket pair.

Under uWSGI these websockets leave their request after the handshake, so
reading (wsproto's frame layer, strict RFC 6455), pings and closing are done
here instead of by uWSGI; the integration tests run them under a real uWSGI
worker.
"""

from __future__ import annotations

import gc
import os
import select
import socket
import struct
import time
import weakref
from collections.abc import Iterator

import gevent
import gevent.event
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from tests.unit.websocket_contract import *  # noqa: F403 - the tests every adapter passes
from tests.wsproto_client import Client, receive_soon
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.core.inbound import InboundPolicy, TokenBucket
from ws4redis_uwsgi.exceptions import SlowConsumerError, WebSocketError
from ws4redis_uwsgi.server.detached import DetachedWebsocket, KeepAliveWheel
from ws4redis_uwsgi.server.limits import FRAMES_PER_CALL


@pytest.fixture
def pair() -> Iterator[tuple[DetachedWebsocket, Client]]:
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)  # as uWSGI's client sockets are
    client_sock.settimeout(5)
    websocket = DetachedWebsocket(os.dup(server_sock.fileno()), max_size=1000)
    server_sock.close()  # the websocket holds its own descriptor, as after uWSGI closed the request's
    yield websocket, Client(client_sock)
    websocket.dispose()
    client_sock.close()


def test_text_and_binary_arrive_as_bytes_in_order(pair):
    websocket, client = pair
    client.send(TextMessage(data="grüße"), BytesMessage(data=b"\xff\x00"), TextMessage(data="x" * 300))
    assert receive_soon(websocket) == "grüße".encode()
    assert receive_soon(websocket) == b"\xff\x00"
    assert receive_soon(websocket) == b"x" * 300  # a 16-bit length
    assert websocket.receive() is None


def test_a_frame_split_across_reads_arrives_whole(pair):
    websocket, client = pair
    frame = client.connection.send(TextMessage(data="split in three"))
    for part in (frame[:1], frame[1:5], frame[5:]):
        assert websocket.receive() is None
        client.sock.sendall(part)
        time.sleep(0.01)
    assert receive_soon(websocket) == b"split in three"


def test_a_fragmented_message_arrives_whole_with_a_ping_in_between(pair):
    websocket, client = pair
    client.send(TextMessage(data="one ", message_finished=False), Ping(payload=b"hi"))
    assert websocket.receive() is None  # a fragment is not a message
    assert client.events() == [Pong(payload=b"hi")]
    client.send(TextMessage(data="two", message_finished=True))
    assert receive_soon(websocket) == b"one two"


def test_a_character_split_between_fragments_arrives_whole(pair):
    websocket, client = pair
    text = "grü".encode()
    client.sock.sendall(masked(0x01, text[:-1]) + masked(0x80, text[-1:] + b"!"))
    assert receive_soon(websocket) == "grü!".encode()


def test_a_ping_is_answered_with_its_payload(pair):
    websocket, client = pair
    client.send(Ping(payload=b"are you there"), Ping(payload=b""))
    assert receive_soon_or_none(websocket) is None
    assert client.events(2) == [Pong(payload=b"are you there"), Pong(payload=b"")]
    assert not websocket.closed


def masked(first_byte: int, payload: bytes) -> bytes:
    """A client frame with any first byte (FIN, RSV bits, opcode), masked as a client's must be."""
    frame = bytearray(Connection(ConnectionType.CLIENT).send(BytesMessage(data=payload)))
    frame[0] = first_byte
    return bytes(frame)


def refused_with(websocket: DetachedWebsocket, client: Client, data: bytes, before: tuple = ()) -> int:
    """Send ``data``: the close code the websocket sends when it gives up on the client (after the events ``before``)."""
    client.sock.sendall(data)
    client.sock.shutdown(socket.SHUT_WR)  # close() need not wait for the client's end
    deadline = time.monotonic() + 2
    with pytest.raises(WebSocketError):
        while time.monotonic() < deadline:
            assert websocket.receive() is None
            time.sleep(0.002)
    assert websocket.closed  # closed by the server, not just ended by the client's shutdown
    events = client.events()
    while not isinstance(events[-1], CloseConnection):
        events += client.events()
    assert events[:-1] == list(before)
    close = events[-1]
    # The server's reason: the client's wsproto would report a close frame it found broken as a 1002 of its own.
    assert close.reason == REASONS[close.code]
    return close.code


REASONS = {CloseCode.PROTOCOL_ERROR: "protocol error", 1007: "invalid UTF-8", CloseCode.MESSAGE_TOO_BIG: "message too big"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"\x81\x05hello", CloseCode.PROTOCOL_ERROR, id="unmasked frame"),
        pytest.param(masked(0x81 | 0x40, b"rsv1"), CloseCode.PROTOCOL_ERROR, id="rsv1 set"),
        pytest.param(masked(0x81 | 0x10, b"rsv3"), CloseCode.PROTOCOL_ERROR, id="rsv3 set"),
        pytest.param(masked(0x83, b"?"), CloseCode.PROTOCOL_ERROR, id="unknown opcode"),
        pytest.param(masked(0x80, b"x"), CloseCode.PROTOCOL_ERROR, id="continuation without a message"),
        pytest.param(
            masked(0x01, b"one ") + masked(0x81, b"two"), CloseCode.PROTOCOL_ERROR, id="new message in a fragmented one"
        ),
        pytest.param(masked(0x09, b"ping"), CloseCode.PROTOCOL_ERROR, id="fragmented ping"),
        pytest.param(masked(0x88, (999).to_bytes(2, "big")), CloseCode.PROTOCOL_ERROR, id="close with an invalid code"),
        pytest.param(masked(0x81, b"ok \xff"), 1007, id="invalid utf-8 text"),
        # No final fragment follows: the text must be checked as it arrives.
        pytest.param(masked(0x01, b"gr\xc3("), 1007, id="invalid utf-8 in a first fragment"),
    ],
)
def test_what_rfc_6455_forbids_closes_with_the_code_wsproto_gives(pair, data, code):
    websocket, client = pair
    assert refused_with(websocket, client, data) == code


def test_a_message_before_a_violation_still_arrives(pair):
    websocket, client = pair
    client.sock.sendall(client.connection.send(TextMessage(data="fine")) + b"\x81\x03bad")
    assert receive_soon(websocket) == b"fine"
    assert refused_with(websocket, client, b"") == CloseCode.PROTOCOL_ERROR


def test_a_violation_ends_only_its_own_websocket(pair):
    websocket, client = pair
    other_server_sock, other_client_sock = socket.socketpair()
    other_server_sock.setblocking(False)
    other_client_sock.settimeout(5)
    other, other_client = DetachedWebsocket(other_server_sock.detach(), max_size=1000), Client(other_client_sock)
    try:
        other_client.send(TextMessage(data="one ", message_finished=False))
        assert receive_soon_or_none(other) is None
        assert refused_with(websocket, client, b"\x81\x05hello") == CloseCode.PROTOCOL_ERROR
        other_client.send(Ping(payload=b"p"), TextMessage(data="two"))
        assert receive_soon(other) == b"one two"
        assert other_client.events() == [Pong(payload=b"p")]
        assert not other.closed
    finally:
        other.dispose()
        other_client_sock.close()


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Memory freed at once, not by the garbage collector."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_a_disposed_websocket_lets_go_of_the_session_it_wakes(pair, no_gc):
    """The session holds its websocket and the websocket its session's wake: a cycle until the end.

    Left, each ended websocket would wait for a full garbage collection, which walks every such
    object of a worker until one runs (80,000 after 8,000 logged-in websockets closed).
    """
    websocket, _client = pair

    class Session:
        def wake(self) -> None:
            pass

    session = Session()
    session.websocket = websocket  # type: ignore[attr-defined]
    websocket.direct_writer(session.wake)
    gone = weakref.ref(session)
    websocket.dispose()
    del session
    assert gone() is None


def test_the_parser_is_made_on_the_first_bytes_and_freed_between_frames(pair, no_gc):
    """An idle websocket holds no wsproto parser, also after the client sent something (a pong every 30 s)."""
    websocket, client = pair
    assert websocket._protocol is None
    assert websocket.receive() is None
    assert websocket._protocol is None
    frame = client.connection.send(TextMessage(data="in two reads"))
    client.sock.sendall(frame[:4])
    assert receive_soon_or_none(websocket) is None
    parser = weakref.ref(websocket._protocol)  # a frame begun
    client.sock.sendall(frame[4:])
    assert receive_soon(websocket) == b"in two reads"
    assert websocket._protocol is None
    assert parser() is None
    client.send(TextMessage(data="one ", message_finished=False))
    assert receive_soon_or_none(websocket) is None
    assert websocket._protocol is not None  # a message under way
    client.send(TextMessage(data="two"), Pong(payload=b""))
    assert receive_soon(websocket) == b"one two"
    parser = weakref.ref(websocket._protocol)  # the pong is not parsed yet
    assert websocket.receive() is None
    assert websocket._protocol is None
    assert parser() is None
    client.sock.sendall(frame[:4])
    assert receive_soon_or_none(websocket) is None
    parser = weakref.ref(websocket._protocol)
    websocket.dispose()  # the client went away in the middle of a frame
    assert parser() is None


def test_a_message_of_max_size_in_fragments_arrives(pair):
    websocket, client = pair
    client.send(BytesMessage(data=b"a" * 400, message_finished=False), BytesMessage(data=b"b" * 600))
    assert receive_soon(websocket) == b"a" * 400 + b"b" * 600
    assert not websocket.closed


def test_a_message_over_the_limit_in_fragments_closes_with_1009(pair):
    websocket, client = pair
    client.send(TextMessage(data="x" * 600, message_finished=False), Ping(payload=b""), TextMessage(data="y" * 401))
    assert refused_with(websocket, client, b"", before=(Pong(payload=b""),)) == CloseCode.MESSAGE_TOO_BIG


def test_a_frame_over_the_limit_closes_with_1009_before_it_all_arrived(pair):
    websocket, client = pair
    frame = client.connection.send(BytesMessage(data=b"z" * 100_000))
    # A header for 100 kB, then a bit more than the limit: the rest never comes.
    assert refused_with(websocket, client, frame[:1200]) == CloseCode.MESSAGE_TOO_BIG


def test_the_end_of_the_connection_ends_receiving(pair):
    websocket, client = pair
    client.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(WebSocketError):
        receive_soon(websocket)


def test_close_sends_the_code_and_waits_for_the_client(pair):
    websocket, client = pair
    websocket.close(CloseCode.SERVICE_RESTART, "server restart")
    (event,) = client.events()
    assert (event.code, event.reason) == (CloseCode.SERVICE_RESTART, "server restart")
    with pytest.raises(WebSocketError):
        websocket.receive()


def nothing_sent(client) -> bool:
    client.sock.setblocking(False)
    try:
        client.sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        client.sock.settimeout(5)  # as the fixture made it: a missing frame fails, it does not hang
    return False


def test_keep_alive_pings_as_uwsgi_does_and_gives_up_on_a_silent_client(pair):
    websocket, client = pair
    opened = time.monotonic()
    assert websocket.keep_alive(opened + 29, ping_freq=30, pong_tolerance=3)  # not before ping_freq after the handshake
    assert nothing_sent(client)
    assert websocket.keep_alive(opened + 31, ping_freq=30, pong_tolerance=3)
    assert client.events() == [Ping(payload=b"")]
    client.send(Pong(payload=b""))
    assert receive_soon_or_none(websocket) is None
    assert websocket.keep_alive(opened + 40, ping_freq=30, pong_tolerance=3)  # answered: the next ping 30 s after it
    assert nothing_sent(client)
    assert websocket.keep_alive(opened + 61.01, ping_freq=30, pong_tolerance=3)  # (not exactly 30 s: floats)
    assert client.events() == [Ping(payload=b"")]
    # This one is not answered.
    assert websocket.keep_alive(opened + 63, ping_freq=30, pong_tolerance=3)
    assert not websocket.keep_alive(opened + 65, ping_freq=30, pong_tolerance=3)
    with pytest.raises(WebSocketError):
        websocket.receive()


def receive_soon_or_none(websocket: DetachedWebsocket) -> bytes | None:
    """receive() after the client's frames had time to arrive."""
    time.sleep(0.05)
    return websocket.receive()


def test_pings_count_against_the_rate_and_a_flood_is_closed_with_1008(pair):
    websocket, client = pair
    websocket.inbound = InboundPolicy(bucket=TokenBucket(rate=1, burst=3, now=time.monotonic()))
    client.send(*(Ping(payload=b"") for _ in range(10)))
    REASONS[CloseCode.POLICY_VIOLATION] = "rate limit exceeded"
    try:
        assert refused_with(websocket, client, b"", before=(Pong(payload=b""),) * 3) == CloseCode.POLICY_VIOLATION
    finally:
        del REASONS[CloseCode.POLICY_VIOLATION]


def test_one_receive_acts_on_a_bounded_number_of_frames_and_says_more_waits(pair):
    websocket, client = pair
    client.send(*(Ping(payload=b"") for _ in range(FRAMES_PER_CALL * 3)), TextMessage(data="after the pings"))
    time.sleep(0.05)  # everything has arrived
    assert websocket.receive() is None
    assert websocket.pending  # frames are left for the next call
    assert client.events(FRAMES_PER_CALL) == [Pong(payload=b"")] * FRAMES_PER_CALL  # answered in one write
    assert receive_soon(websocket) == b"after the pings"
    assert not websocket.pending


def test_a_client_that_takes_no_frame_within_the_timeout_is_reset_as_a_slow_consumer(pair):
    websocket, client = pair
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with pytest.raises(SlowConsumerError):
        for _ in range(1000):
            websocket._send_frame(b"\x82\x7e\xff\xff" + b"x" * 0xFFFF, timeout=0.2)
    assert websocket.closed


def test_a_client_that_takes_a_little_now_and_then_is_reset_once_a_frame_took_longer_than_the_timeout():
    """The timeout is a deadline for the whole frame: each few bytes the client takes do not start it again."""
    listener = socket.create_server(("127.0.0.1", 0))
    browser = socket.socket()
    browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    browser.connect(listener.getsockname())
    server_side, _ = listener.accept()
    server_side.setblocking(False)
    websocket = DetachedWebsocket(os.dup(server_side.fileno()), send_buffer=16384)
    server_side.close()
    stop = gevent.event.Event()

    def trickle() -> None:  # about 400 KB/s
        while not stop.wait(0.02):
            try:
                browser.recv(8192)
            except OSError:
                return

    reader = gevent.spawn(trickle)
    started = time.monotonic()
    try:
        with pytest.raises(SlowConsumerError, match=r"within 0\.5 s"):
            websocket._send_frame(b"\x82\x7f" + struct.pack("!Q", 1 << 22) + b"x" * (1 << 22), timeout=0.5)
    finally:
        stop.set()
        reader.join(5)
        websocket.dispose()
        browser.close()
        listener.close()
    assert time.monotonic() - started < 3  # the whole 4 MiB would take 10 s
    assert websocket.closed


def test_giving_up_on_a_client_ends_the_write_that_waits_for_it_at_once(pair):
    websocket, client = pair
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = b"\x82\x7e\xff\xff" + b"x" * 0xFFFF
    websocket.give_up()  # no write waits: nothing happens
    websocket._send_frame(frame, timeout=5)
    assert not websocket.closed
    gevent.spawn_later(0.2, websocket.give_up)
    started = time.monotonic()
    with pytest.raises(SlowConsumerError, match="fell too far behind"):
        for _ in range(1000):
            websocket._send_frame(frame, timeout=30)
    assert time.monotonic() - started < 2
    assert websocket.closed
    client.sock.settimeout(2)
    while client.sock.recv(65536):  # the connection ends for the client (over TCP, with a reset)
        pass


def test_closing_a_connection_the_client_reset_raises_nothing():
    """ENOTCONN, EPIPE, ECONNRESET: whatever the errno, a client that is gone needs no close frame."""
    listener = socket.create_server(("127.0.0.1", 0))
    browser = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    server_side.setblocking(False)
    websocket = DetachedWebsocket(os.dup(server_side.fileno()))
    server_side.close()
    browser.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    browser.close()  # a reset
    time.sleep(0.05)
    websocket.close(CloseCode.NORMAL_CLOSURE)
    assert websocket.closed
    websocket.dispose()
    listener.close()


def readable(websocket: DetachedWebsocket) -> None:
    """Wait until the client's bytes are there, as the event loop's watcher does before take_pong()."""
    assert select.select([websocket.get_file_descriptor()], [], [], 5)[0], "the client's frame did not arrive"


def test_a_lone_pong_is_taken_without_a_turn_and_the_next_ping_is_due_ping_freq_after_the_last(pair):
    websocket, client = pair
    websocket.inbound = InboundPolicy()
    opened = time.monotonic()
    assert websocket.keepalive_due(30, 3) < opened + 30 <= websocket.keepalive_due(30, 3) + 0.01
    assert websocket.keep_alive(opened + 31, ping_freq=30, pong_tolerance=3)
    assert client.events() == [Ping(payload=b"")]
    assert websocket.keepalive_due(30, 3) == pytest.approx(opened + 31 + 3, abs=0.01)  # the end, unless a pong comes
    client.send(Pong(payload=b""))
    readable(websocket)
    assert websocket.take_pong()
    assert websocket.keepalive_due(30, 3) == pytest.approx(opened + 31 + 30, abs=0.01)
    assert websocket.keep_alive(opened + 40, ping_freq=30, pong_tolerance=3)  # answered: not gone
    assert nothing_sent(client)
    assert websocket.receive() is None  # nothing left behind


@pytest.mark.parametrize(
    "events",
    [
        pytest.param((TextMessage(data="hello"),), id="a message"),
        pytest.param((Pong(payload=b""), TextMessage(data="hello")), id="a pong and a message"),
        pytest.param((TextMessage(data="hello"), Pong(payload=b"")), id="a message and a pong"),
    ],
)
def test_what_take_pong_read_besides_a_lone_pong_is_acted_on_by_the_next_receive(pair, events):
    websocket, client = pair
    websocket.inbound = InboundPolicy()
    client.send(*events)
    readable(websocket)
    assert not websocket.take_pong()
    assert receive_soon(websocket) == b"hello"


def test_a_pong_past_the_rate_is_left_to_the_turn_which_closes_with_1008(pair):
    websocket, client = pair
    websocket.inbound = InboundPolicy(bucket=TokenBucket(rate=0.001, burst=1, now=time.monotonic()))
    client.send(Pong(payload=b""))
    readable(websocket)
    assert websocket.take_pong()  # within the burst
    client.send(Pong(payload=b""))
    readable(websocket)
    assert not websocket.take_pong()
    REASONS[CloseCode.POLICY_VIOLATION] = "rate limit exceeded"
    try:
        assert refused_with(websocket, client, b"") == CloseCode.POLICY_VIOLATION
    finally:
        del REASONS[CloseCode.POLICY_VIOLATION]


def test_take_pong_reads_nothing_without_the_client_s_limits_or_with_a_message_under_way(pair):
    websocket, client = pair
    client.send(Pong(payload=b""))
    readable(websocket)
    assert not websocket.take_pong()  # no inbound policy yet: the turn makes it
    websocket.inbound = InboundPolicy()
    assert websocket.take_pong()  # the pong was left in the socket
    frame = client.connection.send(TextMessage(data="in two parts"))
    client.sock.sendall(frame[:3])
    readable(websocket)
    assert websocket.receive() is None  # a frame begun: the parser holds it
    client.sock.sendall(frame[3:])
    readable(websocket)
    assert not websocket.take_pong()
    assert receive_soon(websocket) == b"in two parts"


def test_the_answer_to_our_ping_is_taken_without_the_client_s_limits_and_anything_else_is_left_to_the_turn(pair):
    """An idle client holds no inbound policy; the pong that answers our ping needs none (a fresh one lets it pass)."""
    websocket, client = pair
    assert websocket.inbound is None
    assert websocket.keep_alive(time.monotonic() + 31, ping_freq=30, pong_tolerance=3)
    assert client.events() == [Ping(payload=b"")] and websocket.awaiting_pong
    client.send(Pong(payload=b""))
    readable(websocket)
    assert websocket.take_pong(charge=False) and not websocket.awaiting_pong
    assert websocket.inbound is None
    client.send(TextMessage(data="hello"))
    readable(websocket)
    assert not websocket.take_pong(charge=False)
    websocket.inbound = InboundPolicy()  # what the turn does before it receives
    assert receive_soon(websocket) == b"hello"


@pytest.mark.parametrize("awaiting", [False, True])
@pytest.mark.parametrize(("ping_freq", "pong_tolerance"), [(30, 3), (30, 10), (1, 1), (1, 3), (25.5, 0.5)])
def test_keep_alive_does_nothing_before_the_due_time(pair, awaiting, ping_freq, pong_tolerance):
    """The due time is a lower bound: skipping a websocket until then (KeepAliveWheel) changes no decision."""
    websocket, client = pair
    last = time.monotonic()
    websocket._last_ping, websocket._awaiting_pong = last, awaiting
    due = websocket.keepalive_due(ping_freq, pong_tolerance)
    for step in range(0, 4000):
        now = last + step * 0.01
        if now >= due:
            break
        assert websocket.keep_alive(now, ping_freq, pong_tolerance)
        assert (websocket._last_ping, websocket._awaiting_pong) == (last, awaiting)
    assert nothing_sent(client)
    # And the rule acts within a round after it (here, at the due time plus the slack and one step).
    now = due + 0.002
    if awaiting and pong_tolerance <= ping_freq:
        assert not websocket.keep_alive(now, ping_freq, pong_tolerance)
    elif awaiting:  # due early (the pong may have come and the next ping be due): the rule still waits for the pong
        assert websocket.keep_alive(now, ping_freq, pong_tolerance)
        assert nothing_sent(client)
    else:
        assert websocket.keep_alive(now, ping_freq, pong_tolerance)
        assert client.events() == [Ping(payload=b"")]


class _Entry:
    """What KeepAliveWheel keeps of a session: its bucket."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.keepalive_key: int | None = None

    def __repr__(self) -> str:
        return self.name


def test_the_keepalive_wheel_gives_every_session_due_by_now_and_forgets_the_ended():
    wheel = KeepAliveWheel(5.0)
    entries = {name: _Entry(name) for name in ("a", "b", "c", "d", "e")}
    wheel.schedule(entries["a"], 101.0)
    wheel.schedule(entries["b"], 104.9)  # same period as a: may come early, which decides nothing
    wheel.schedule(entries["c"], 105.0)
    wheel.schedule(entries["d"], 250.0)
    wheel.schedule(entries["e"], None)  # never due (closed)
    assert len(wheel) == 4 and entries["e"].keepalive_key is None
    wheel.cancel(entries["d"])  # ended
    assert len(wheel) == 3
    assert wheel.take_due(99.0) == []
    assert sorted(map(repr, wheel.take_due(101.0))) == ["a", "b"]
    assert entries["a"].keepalive_key is None
    wheel.schedule(entries["a"], 104.0)  # put back into a period already taken: the next round has it
    assert sorted(map(repr, wheel.take_due(105.0))) == ["a", "c"]
    assert len(wheel) == 0 and wheel.take_due(1e9) == []
    wheel.schedule(entries["b"], 10.0)
    wheel.schedule(entries["b"], 20.0)  # moved, not twice
    assert len(wheel) == 1 and wheel.take_due(20.0) == [entries["b"]]


class _Pinged:
    """A detached session as the keep-alive round sees it: a real websocket over a socket pair, due for a ping."""

    def __init__(self) -> None:
        server_sock, self.client = socket.socketpair()
        server_sock.setblocking(False)
        self.websocket = DetachedWebsocket(os.dup(server_sock.fileno()), max_size=1000)
        server_sock.close()
        self.websocket._last_ping -= 3600  # opened an hour ago, never pinged since
        self.path = "/ws/chat"
        self.keepalive_key: int | None = None

    def wake(self) -> None:
        raise AssertionError("not gone: no ping was owed an answer")

    def close(self) -> None:
        self.websocket.dispose()
        self.client.close()


def test_a_keepalive_round_of_many_websockets_lets_the_worker_run_every_batch_and_skips_those_that_ended():
    """Websockets that opened together (a reconnect storm) come due together: the round must not hold the worker."""
    from ws4redis_uwsgi.server.limits import KEEPALIVE_BATCH, websocket_limits
    from ws4redis_uwsgi.server.uwsgi import uWSGIWebsocketServer

    server = uWSGIWebsocketServer()
    sessions = [_Pinged() for _ in range(3 * KEEPALIVE_BATCH)]
    try:
        server.sessions.update(sessions)  # type: ignore[arg-type]
        now = time.monotonic()
        for session in sessions:
            server.keepalive.schedule(session, now - 1)  # type: ignore[arg-type]
        ran: list[int] = []
        ended: list[_Pinged] = []

        def worker_meanwhile() -> None:
            """A delivery, a handshake: whatever else the worker has to do while the round goes on."""
            while True:
                pinged = sum(1 for s in sessions if s.websocket.awaiting_pong)
                ran.append(pinged)
                if pinged == 2 * KEEPALIVE_BATCH and not ended:  # one of the last batch ends meanwhile
                    ended.append(next(s for s in sessions if not s.websocket.awaiting_pong))
                    server.sessions.discard(ended[0])  # type: ignore[arg-type]
                gevent.sleep(0)

        other = gevent.spawn(worker_meanwhile)
        gevent.sleep(0)
        server._keepalive_round(now, websocket_limits())
        during = ran[:]
        other.kill()
        assert [count for count in during if count] == [KEEPALIVE_BATCH, 2 * KEEPALIVE_BATCH]
        assert [s for s in sessions if not s.websocket.awaiting_pong] == ended
        assert all(s.client.recv(16) == b"\x89\x00" for s in sessions if s not in ended)  # a ping each, the ended one none
        assert len(server.keepalive) == len(sessions) - 1  # due again: the pong's tolerance
    finally:
        for session in sessions:
            session.close()
