"""Defects found by probing a worker from the outside, each on real processes: leaks, stalls, forged input.

Every test runs a real uWSGI worker and a real redis-server, misbehaves as an
attacker or a careless client would, and checks what a user would: what a
well-behaved client on the same worker still gets, and what the worker holds
afterwards (descriptors, memory, Redis subscriptions, log lines).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import redis
from django.test import override_settings
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import InvalidStatus

from tests.conftest import SITE_ENV
from tests.integration.helpers import (
    SITE_ORIGIN,
    client,
    close_code_of,
    facility,
    raw_websocket,
    recv,
    split,
    wait_subscribed,
)
from tests.servers import TIMING, RedisServer, UwsgiServer, wait_for
from ws4redis_uwsgi.core.close_codes import CloseCode, close_frame
from ws4redis_uwsgi.core.envelope import MAGIC, parse_id
from ws4redis_uwsgi.core.outbox import GAP_NOTICE
from ws4redis_uwsgi.core.positions import decode_token, encode_token
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def worker(server: UwsgiServer) -> psutil.Process:
    (pid,) = server.worker_pids()
    return psutil.Process(pid)


def subscribers(probe: redis.Redis, channel: str) -> int:
    return int(dict(probe.pubsub_numsub(channel)).get(channel.encode(), 0))


def handshake_status(server: UwsgiServer, path: str) -> tuple[bytes, socket.socket]:
    """The status line a websocket request gets, and its socket (left open)."""
    try:
        sock = raw_websocket(server, path, timeout=15)
    except AssertionError as refused:
        return str(refused).encode()[:40], None  # type: ignore[return-value]
    return b"HTTP/1.1 101", sock


# -- 1. Redis down at the handshake leaked the slot, the descriptor and the subscription --


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
@pytest.mark.timeout(120)
@pytest.mark.parametrize("linger", ["0", "2"], ids=["unsubscribed-at-once", "channels-linger"])
def test_websockets_dropped_while_redis_is_down_leave_nothing_behind(site_db, tmp_path, linger):
    redis_server = RedisServer(workdir=tmp_path).start()
    env = {
        **SITE_ENV,
        "WS4REDIS_TEST_REDIS": redis_server.url,
        "WS4REDIS_TEST_MAX_CONNECTIONS": "50",
        "WS4REDIS_TEST_CHANNEL_LINGER": linger,  # the default keeps channels a while: they must go too
    }
    server = UwsgiServer(env, cores=60, log_path=tmp_path / "uwsgi.log").start()
    fac = facility()
    path = f"/ws/{fac}?subscribe-broadcast"
    channel = f"test:broadcast:{fac}"
    probe = redis.Redis.from_url(redis_server.url)
    try:
        with client(server, path):  # the worker has loaded everything a websocket needs
            pass
        wait_for(lambda: subscribers(probe, channel) == 0, 10, "the first websocket's subscription to go")
        fds_before = worker(server).num_fds()
        redis_server.kill()

        def open_and_drop(_: int) -> bytes:
            status, sock = handshake_status(server, path)
            if sock is not None:
                sock.shutdown(socket.SHUT_WR)  # the client leaves right after its 101
                sock.close()
            return status

        with ThreadPoolExecutor(60) as pool:
            statuses = list(pool.map(open_and_drop, range(60)))
        assert statuses.count(b"HTTP/1.1 101") == 50, statuses  # the limit held during the outage
        redis_server.start()
        with override_settings(WS4REDIS_CONNECTION=redis_server.url):
            # Every slot, descriptor and subscription came back...
            wait_for(lambda: worker(server).num_fds() <= fds_before + 3, 30, "the worker's descriptors to be given back")
            # ... so a new websocket is served, not refused with 503, and receives.
            with client(server, path) as ws:
                wait_subscribed(probe, channel)
                RedisPublisher(facility=fac, broadcast=True).publish_message("after the outage", expire=0)
                assert recv(ws) == "after the outage"
            wait_for(lambda: subscribers(probe, channel) == 0, 10, "the subscription to be dropped")
    finally:
        server.stop()
        redis_server.stop()
    assert "Traceback" not in server.log_text()


# -- 2. One client could stall the whole worker ---------------------------------------

PING = b"\x89\x80\0\0\0\0"  # a masked, empty ping
#: Unasked pongs: detached websockets take pongs in the event loop, outside any turn, and count them too.
PONG = b"\x8a\x80\0\0\0\0"
HEARTBEAT = b"--heartbeat--"  # the test site's WS4REDIS_HEARTBEAT
HEARTBEAT_FRAME = bytes((0x81, 0x80 | len(HEARTBEAT))) + b"\0\0\0\0" + HEARTBEAT
RATE_LIMITED = close_frame(CloseCode.POLICY_VIOLATION, "rate limit exceeded")


class Flooder:
    """Sends one frame as fast as it can (10,000 per write) and reads what comes back, as the probe did."""

    def __init__(self, sock: socket.socket, frame: bytes, seconds: float) -> None:
        self.sock = sock
        self.frame = frame * 10_000
        self.seconds = seconds
        self.received = bytearray()
        self.sent = 0  # writes done
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True), threading.Thread(target=self._read, daemon=True)]

    def __enter__(self) -> Flooder:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        self.sock.close()

    def _write(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline and not self.stop.is_set():
                self.sock.sendall(self.frame)
                self.sent += 1
        except OSError:
            pass  # closed by the server
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _read(self) -> None:
        self.sock.settimeout(self.seconds + 10 * TIMING)
        try:
            while data := self.sock.recv(1 << 20):
                self.received += data[-4096:] if len(self.received) > 1 << 20 else data
        except OSError:
            pass


def bystander_latencies(server: UwsgiServer, fac: str, count: int = 10) -> tuple[list[float], list[float]]:
    """While something else goes on: seconds from publish to receipt of ``count`` broadcasts, and of new handshakes."""
    latencies: list[float] = []
    handshakes: list[float] = []
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws:
        for i in range(count):
            sent = time.monotonic()
            publisher.publish_message(f"tick {i}", expire=0)
            assert recv(ws) == f"tick {i}"
            latencies.append(time.monotonic() - sent)
            if i % 3 == 0:
                started = time.monotonic()
                with client(server, f"/ws/{facility()}?subscribe-broadcast"):
                    handshakes.append(time.monotonic() - started)
            time.sleep(0.2)
    return latencies, handshakes


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("frame", "kind"), [(PING, "pings"), (PONG, "pongs"), (HEARTBEAT_FRAME, "heartbeats")])
def test_a_client_flooding_pings_or_heartbeats_is_closed_with_1008_and_stalls_nobody(uwsgi_server, redis_client, frame, kind):
    fac = facility()
    with Flooder(raw_websocket(uwsgi_server, f"/ws/{fac}?subscribe-broadcast"), frame, seconds=5) as flooder:
        latencies, handshakes = bystander_latencies(uwsgi_server, fac, count=5)
    assert RATE_LIMITED in flooder.received, f"the {kind} flood was not closed with 1008"
    assert max(latencies) < 0.5 * TIMING, latencies
    assert max(handshakes) < 1.0 * TIMING, handshakes


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("frame", "kind"), [(PING, "pings"), (HEARTBEAT_FRAME, "heartbeats")])
def test_without_a_rate_limit_a_flood_still_gets_its_turn_only(redis_server, site_db, tmp_path, frame, kind):
    """Work for one client is bounded per turn: another client's broadcasts and handshakes go on."""
    env = {**SITE_ENV, "WS4REDIS_TEST_RATE_LIMIT": "none"}
    server = UwsgiServer(env, cores=50, log_path=tmp_path / "uwsgi.log").start()
    fac = facility()
    try:
        with Flooder(raw_websocket(server, f"/ws/{fac}?subscribe-broadcast"), frame, seconds=30) as flooder:
            wait_for(lambda: len(flooder.received) > 0, 10, f"the {kind} to be answered")
            sent_before = flooder.sent
            latencies, handshakes = bystander_latencies(server, fac, count=10)
            sent_during = flooder.sent - sent_before
    finally:
        server.stop()
    assert sent_during >= 3, kind  # the flood went on (and was answered) while the bystander was measured
    assert RATE_LIMITED not in flooder.received, kind
    assert max(latencies) < 0.5 * TIMING, latencies
    assert max(handshakes) < 1.0 * TIMING, handshakes


# -- 3. Resuming from history held the whole backlog per client ------------------------


@pytest.mark.timeout(180)
def test_resuming_clients_that_never_read_hold_a_page_of_history_not_all_of_it(private_stack):
    _, server = private_stack
    fac = facility()
    path = f"/ws/{fac}?subscribe-broadcast&resume=0-0"
    publisher = RedisPublisher(facility=fac, broadcast=True)
    filler = "x" * 61_000
    for i in range(1000):
        publisher.publish_message(f"{i:04d} {filler}", expire=0)
    with client(server, f"/ws/{facility()}?subscribe-broadcast"):
        pass
    process = worker(server)
    before = process.memory_info().rss
    stuck = [raw_websocket(server, path, rcvbuf=4096) for _ in range(10)]  # they never read
    try:
        peak = before
        # Meanwhile a client that reads gets the whole backlog, once, in order.
        with client(server, path) as reader:
            assert recv(reader) == "!gap\n"  # 1970 is further back than any history of an hour
            for i in range(1000):
                _, payload = split(recv(reader))
                assert payload[:4] == f"{i:04d}"
                if i % 50 == 0:
                    peak = max(peak, process.memory_info().rss)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
    finally:
        for sock in stuck:
            sock.close()
    assert peak - before < 48 * MiB, f"{(peak - before) / MiB:.0f} MiB for 11 resuming clients"
    wait_for(lambda: len(process.net_connections()) <= 12, 30, "the stuck clients to be gone")
    assert process.memory_info().rss - before < 48 * MiB


def backlog_worker(tmp_path, **limits: str) -> UwsgiServer:
    """A worker with some of its limits lowered (the test site reads them from the environment)."""
    return UwsgiServer({**SITE_ENV, **limits}, cores=50, log_path=tmp_path / "uwsgi.log").start()


def fill_history(fac: str, count: int = 200) -> None:
    """``count`` messages of 61 KB on ``fac``'s broadcast channel: a backlog far larger than the socket buffers."""
    publisher = RedisPublisher(facility=fac, broadcast=True)
    filler = "x" * 61_000
    for i in range(count):
        publisher.publish_message(f"{i:04d} {filler}", expire=0)


def assert_bystander_served(server: UwsgiServer, fac: str) -> None:
    """A plain client on ``fac`` gets a broadcast at once."""
    with client(server, f"/ws/{fac}?subscribe-broadcast") as bystander:
        RedisPublisher(facility=fac, broadcast=True).publish_message("live", expire=0)
        assert bystander.recv(timeout=2 * TIMING) == "live"


@pytest.mark.timeout(90)
def test_a_resuming_client_that_gets_no_backlog_budget_is_closed_with_1013(redis_server, site_db, tmp_path):
    """With the worker's backlog budget held by a client that does not read, another resuming client is asked to come back."""
    server = backlog_worker(tmp_path, WS4REDIS_TEST_BACKLOG_BUDGET="1", WS4REDIS_TEST_BACKLOG_WAIT="1")
    fac = facility()
    path = f"/ws/{fac}?subscribe-broadcast&resume=0-0"
    fill_history(fac)
    stuck = raw_websocket(server, path, rcvbuf=4096)  # never reads: its page holds the whole budget
    try:
        stuck.recv(1, socket.MSG_PEEK)  # its backlog is on its way, within the budget
        waiting = raw_websocket(server, path)
        with waiting:
            started = time.monotonic()
            assert close_code_of(waiting, timeout=10) == CloseCode.TRY_AGAIN_LATER
            assert time.monotonic() - started < 5 * TIMING
        assert_bystander_served(server, fac)
    finally:
        stuck.close()
        server.stop()
    assert "waited too long for its backlog" in server.log_text()


@pytest.mark.timeout(90)
def test_a_resuming_client_that_takes_nothing_is_reset_after_the_send_timeout(redis_server, site_db, tmp_path):
    server = backlog_worker(tmp_path, WS4REDIS_TEST_SEND_TIMEOUT="1")
    fac = facility()
    fill_history(fac)
    stuck = raw_websocket(server, f"/ws/{fac}?subscribe-broadcast&resume=0-0", rcvbuf=4096)  # never reads
    port = stuck.getsockname()[1]
    process = worker(server)
    try:
        stuck.recv(1, socket.MSG_PEEK)  # its backlog is on its way
        assert_bystander_served(server, fac)
        wait_for(
            lambda: port not in {c.raddr.port for c in process.net_connections() if c.raddr},
            10,
            "the worker to drop the client that takes nothing",
        )
        # The client finds the connection reset (no close frame could follow a frame cut short).
        stuck.settimeout(5 * TIMING)
        with pytest.raises(ConnectionResetError):
            while stuck.recv(1 << 20):
                pass
    finally:
        stuck.close()
        server.stop()
    assert "did not take its backlog in time" in server.log_text()


# -- 4. The size limit applied only to finished messages -------------------------------


def masked_header(opcode: int, length: int, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + b"\0\0\0\0"
    if length < 1 << 16:
        return struct.pack("!BBH", first, 0x80 | 126, length) + b"\0\0\0\0"
    return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"


@pytest.mark.timeout(60)
def test_an_oversized_message_is_refused_with_1009_at_its_frame_header(uwsgi_server):
    process = worker(uwsgi_server)
    before = process.memory_info().rss

    def announce_and_trickle(_: int) -> int | None:
        sock = raw_websocket(uwsgi_server, f"/ws/{facility()}?publish-broadcast")
        with sock:
            # The header of a 1,000,001-byte frame, then most of it, never finished.
            sock.sendall(masked_header(0x2, 1_000_001))
            try:
                sock.sendall(b"\0" * 1_000_000)
            except OSError:
                pass  # refused already
            return close_code_of(sock)

    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(announce_and_trickle, range(30)))
    assert codes == [CloseCode.MESSAGE_TOO_BIG] * 30
    assert process.memory_info().rss - before < 16 * MiB


@pytest.mark.timeout(60)
def test_the_header_of_an_oversized_frame_alone_is_refused_with_1009_at_once(uwsgi_server):
    """No byte of the payload is needed: the header's length is enough to refuse."""
    sock = raw_websocket(uwsgi_server, f"/ws/{facility()}?publish-broadcast")
    with sock:
        started = time.monotonic()
        sock.sendall(masked_header(0x2, 1_000_001))
        assert close_code_of(sock, timeout=5) == CloseCode.MESSAGE_TOO_BIG
        assert time.monotonic() - started < 1.0 * TIMING


@pytest.mark.timeout(60)
def test_fragments_of_one_message_count_together_against_the_size_limit(uwsgi_server):
    """The test site allows 64 KiB: two fragments of 40,000 bytes are refused at the second header."""
    sock = raw_websocket(uwsgi_server, f"/ws/{facility()}?publish-broadcast")
    with sock:
        sock.sendall(masked_header(0x2, 40_000, fin=False) + b"\0" * 40_000)
        sock.sendall(masked_header(0x0, 40_000))
        assert close_code_of(sock) == CloseCode.MESSAGE_TOO_BIG


# -- 5. A raw publish could silence a channel ------------------------------------------


@pytest.mark.timeout(60)
def test_raw_publishes_imitating_the_wrapping_reach_nobody_and_silence_nothing(uwsgi_server, redis_client):
    fac = facility()
    channel = f"test:broadcast:{fac}"
    publisher = RedisPublisher(facility=fac, broadcast=True)
    log_start = len(uwsgi_server.log_text())
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as plain,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as resuming,
    ):
        redis_client.publish(channel, MAGIC + b"||999999999999999-0\nFORGED AHEAD")
        redis_client.publish(channel, MAGIC + b"||not-an-id\nFORGED")
        redis_client.publish(channel, b"raw from another program")  # part of the contract: arrives as it is
        for text in ("genuine one", "genuine two"):
            publisher.publish_message(text, expire=0)
        assert [recv(plain) for _ in range(3)] == ["raw from another program", "genuine one", "genuine two"]
        before, raw = split(recv(resuming))
        assert raw == "raw from another program"
        decode_token(before)  # a raw message carries the client's token, unchanged
        assert split(recv(resuming))[1] == "genuine one"
        token, payload = split(recv(resuming))
        assert payload == "genuine two" and token != before
    # A forged stored message is no better.
    redis_client.set(channel, MAGIC + b"||999999999999999-0\nFORGED STORED", ex=60)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as late:
        publisher.publish_message("genuine three", expire=0)
        assert split(recv(late))[1] == "genuine three"
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={token}") as resumed:
        assert split(recv(resumed))[1] == "genuine three"  # the resumed token was not silenced either
    assert "message(s) on the bus that this package did not publish" in uwsgi_server.log_text()[log_start:]


@pytest.mark.timeout(60)
def test_a_raw_publish_with_an_id_seconds_ahead_of_the_clock_silences_nothing(uwsgi_server, redis_client):
    """An id 30 s ahead of Redis's clock is as untrusted as one years ahead: the next genuine message arrives at once."""
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    forged = MAGIC + f"||{int(time.time() * 1000) + 30_000}-0\nFORGED".encode()
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as plain,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as resuming,
    ):
        redis_client.publish(f"test:broadcast:{fac}", forged)
        publisher.publish_message("genuine", expire=0)
        assert plain.recv(timeout=2 * TIMING) == "genuine"
        token, payload = split(resuming.recv(timeout=2 * TIMING))
        assert payload == "genuine"
    publisher.publish_message("missed while away", expire=0)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={token}") as back:
        assert split(back.recv(timeout=2 * TIMING))[1] == "missed while away"  # the token skipped nothing


@pytest.mark.timeout(60)
def test_no_key_is_written_by_every_publish(uwsgi_server, redis_client):
    """SPEC 3a: no global counter: a publish writes its channels' streams, and nothing else.

    The publish that creates a channel's stream also marks where it begins
    (``history-trimmed``: a resume from before it is a gap); once per stream, not per publish.
    """
    fac = facility()
    redis_client.delete("test:ws4redis:last-id")  # no earlier version publishes here
    publishers = RedisPublisher(facility=fac, broadcast=True), RedisPublisher(facility=f"{fac}-b", broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        before, sets = set(redis_client.keys("test:*")), sets_run(redis_client)
        for publisher in publishers:
            publisher.publish_message("new stream", expire=0)
        assert split(recv(ws))[1] == "new stream"
        assert sets_run(redis_client) == sets + 2  # one mark per new stream
        created, sets = set(redis_client.keys("test:*")) - before, sets_run(redis_client)
        for n in range(5):
            for publisher in publishers:
                publisher.publish_message(f"one more {n}", expire=0)
        assert [split(recv(ws))[1] for _ in range(5)] == [f"one more {n}" for n in range(5)]
    assert sets_run(redis_client) == sets  # not a SET, not a counter
    assert set(redis_client.keys("test:*")) - before == created
    assert created == {
        f"test:{kind}:broadcast:{name}".encode() for kind in ("history", "history-trimmed") for name in (fac, f"{fac}-b")
    }
    entry_id = redis_client.xrange(f"test:history:broadcast:{fac}")[0][0]
    assert abs(parse_id(entry_id.decode())[0] - time.time() * 1000) < 10_000  # on Redis's clock


def sets_run(redis_client) -> int:
    """How many SET commands Redis ran so far (inside scripts too)."""
    return int(redis_client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("counter", [b"garbage", b"999999999999999-0", b"12-34-56", b"1-" + b"9" * 30])
def test_a_corrupt_counter_of_an_earlier_version_is_ignored(uwsgi_server, redis_client, counter):
    fac = facility()
    redis_client.set("test:ws4redis:last-id", counter)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("after the corruption", expire=0)
        assert split(recv(ws))[1] == "after the corruption"
    ((entry_id, _),) = redis_client.xrange(f"test:history:broadcast:{fac}")
    assert abs(parse_id(entry_id.decode())[0] - time.time() * 1000) < 10_000  # on Redis's clock
    redis_client.delete("test:ws4redis:last-id")


@pytest.mark.timeout(60)
def test_a_forged_entry_in_a_history_stream_gives_resuming_clients_a_gap_not_an_error(uwsgi_server, redis_client):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        publisher.publish_message("seen", expire=0)
        seen, _ = split(recv(ws))
    redis_client.xadd(f"test:history:broadcast:{fac}", {"m": b"FORGED"}, id="999999999999999-0")
    publisher.publish_message("missed", expire=0)  # would fail: the stream's newest id is ahead
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={seen}") as ws:
        assert recv(ws) == "!gap\n"
        assert split(recv(ws))[1] == "missed"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["legacy id", "token"])
def test_a_resume_position_from_the_future_is_a_gap_not_a_silence(uwsgi_server, kind):
    fac = facility()
    ahead = (int(time.time() * 1000) + 3_600_000, 0)
    token = f"{ahead[0]}-0" if kind == "legacy id" else encode_token([(f"test:broadcast:{fac}", ahead)])
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={token}") as ws:
        assert recv(ws) == "!gap\n"
        publisher = RedisPublisher(facility=fac, broadcast=True)
        publisher.publish_message("live", expire=0)
        assert split(recv(ws))[1] == "live"


# -- 6. Websockets opened while Redis was down missed messages --------------------------


class Recorder:
    """A websocket client that keeps every frame it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[str] = []
        self.close_code: int | None = None
        self.opened = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> Recorder:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        async with aconnect(self.url, origin=SITE_ORIGIN, open_timeout=30 * TIMING) as ws:
            self.opened.set()
            try:
                async for frame in ws:
                    self.frames.append(frame)  # type: ignore[arg-type]
            finally:
                self.close_code = ws.close_code

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
@pytest.mark.timeout(120)
def test_websockets_opened_before_during_and_after_an_outage_get_every_later_message(private_stack):
    redis_server, server = private_stack
    fac = facility()
    base = f"{server.url}/ws/{fac}?subscribe-broadcast"
    publisher = RedisPublisher(facility=fac, broadcast=True)
    expected = [f"m{i}" for i in range(40)]
    later = [f"m{i}" for i in range(40, 50)]  # published once the websockets opened after the restart are open
    everything = expected + later

    def publish(text: str) -> None:
        for _ in range(3):  # the first command after the restart may find the pooled connection dead
            try:
                publisher.publish_message(text, expire=0)
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        publisher.publish_message(text, expire=0)

    def payloads(recorder: Recorder, resuming: bool) -> list[str]:
        return [split(f)[1] for f in recorder.frames] if resuming else list(recorder.frames)

    async def scenario() -> tuple[dict[str, Recorder], dict[str, Recorder]]:
        before_resuming = Recorder(f"{base}&resume=").start()
        await asyncio.wait_for(before_resuming.opened.wait(), 10 * TIMING)
        await asyncio.to_thread(publish, "before")
        while not before_resuming.frames:
            await asyncio.sleep(0.01)
        seen, _ = split(before_resuming.frames[0])
        before_resuming.frames.clear()
        before_quiet = Recorder(base).start()  # opened before the outage, and receives nothing before it
        await asyncio.wait_for(before_quiet.opened.wait(), 10 * TIMING)

        redis_server.kill()
        during = {
            "plain": Recorder(base).start(),
            "resume=": Recorder(f"{base}&resume=").start(),
            "resume=<token>": Recorder(f"{base}&resume={seen}").start(),
        }
        await asyncio.wait_for(asyncio.gather(*(r.opened.wait() for r in during.values())), 30 * TIMING)
        await asyncio.to_thread(redis_server.start)
        # Opened at once, while the worker's hub still backs off (seconds, after an outage of seconds):
        # their handshakes wait for a subscription that is not there yet.
        after = {"after restart, plain": Recorder(base).start(), "after restart, resume=": Recorder(f"{base}&resume=").start()}
        # Published at once too: the worker's hub is not subscribed again yet.
        for text in expected:
            await asyncio.to_thread(publish, text)
        await asyncio.wait_for(asyncio.gather(*(r.opened.wait() for r in after.values())), 30 * TIMING)
        for text in later:
            await asyncio.to_thread(publish, text)
        recorders = {"before, plain": before_quiet, "before, resuming": before_resuming, **during, **after}
        deadline = time.monotonic() + 30 * TIMING
        while time.monotonic() < deadline and any(
            payloads(r, "resum" in name)[-1:] != later[-1:] for name, r in recorders.items()
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for a repeat to show up
        for recorder in recorders.values():
            await recorder.stop()
        return recorders, after

    recorders, after = asyncio.run(scenario())
    # The restarted Redis kept nothing: a token from before it names history that is gone, and
    # whatever came after it may be lost with it (here nothing was): told so, then all that followed.
    told = recorders["resume=<token>"].frames.pop(0)
    assert told == GAP_NOTICE.decode(), recorders["resume=<token>"].frames
    for name, recorder in recorders.items():
        assert recorder.close_code is None, (name, recorder.close_code)
        got = payloads(recorder, "resum" in name)
        if name in after:
            # Every message published once it was open, and those published during its handshake: in order, once.
            assert len(got) >= len(later) and got == everything[len(everything) - len(got) :], (name, recorder.frames)
        else:
            assert got == everything, (name, recorder.frames)
        if "resum" in name:
            ids = [split(f)[0] for f in recorder.frames]
            assert len(set(ids)) == len(ids), name  # every message moves the token on
    log = server.log_text()
    assert "Traceback" not in log
    assert "it catches up from history" in log


# -- 7. Ordinary disconnects logged tracebacks -----------------------------------------


@pytest.mark.timeout(90)
def test_a_mass_drop_of_clients_logs_no_traceback_and_leaves_nothing(uwsgi_server):
    fac = facility()
    process = worker(uwsgi_server)
    fds_before = process.num_fds()
    log_start = len(uwsgi_server.log_text())
    with ThreadPoolExecutor(50) as pool:
        sockets = list(pool.map(lambda _: raw_websocket(uwsgi_server, f"/ws/{fac}?subscribe-broadcast"), range(300)))
    RedisPublisher(facility=fac, broadcast=True).publish_message("x" * 100_000, expire=0)  # some left to write
    for i, sock in enumerate(sockets):
        if i % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, as when a network drops
        sock.close()  # else the end of the stream, without a close frame, as when a tab is killed
    wait_for(lambda: process.num_fds() <= fds_before + 3, 30, "the worker's descriptors to be given back")
    assert "Traceback" not in uwsgi_server.log_text()[log_start:]


# -- 9. Log injection --------------------------------------------------------------------


def test_request_data_cannot_forge_a_log_line(uwsgi_server):
    forged = "2026-01-01 00:00:00,000 CRITICAL ws4redis_uwsgi: FORGED"
    path = "/ws/x%0A" + forged.replace(" ", "%20")
    with socket.create_connection(("127.0.0.1", uwsgi_server.port), timeout=5) as conn:
        conn.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {SITE_ORIGIN}\r\n\r\n".encode()
        )
        assert conn.recv(4096).startswith(b"HTTP/1.1 400")
    wait_for(lambda: "FORGED" in uwsgi_server.log_text(), 5, "the refusal's log line")
    lines = uwsgi_server.log_text().splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert any("\\n" + forged in line for line in lines)  # logged, escaped, on the refusal's own line


# -- 7. A burst past the worker's descriptors: 503, never a 101 and a drop -------------


@pytest.mark.timeout(120)
def test_a_burst_past_the_descriptor_limit_is_refused_with_503_not_dropped_after_101(redis_server, site_db, tmp_path):
    """Each websocket keeps a descriptor; when none is left, the client is told so before its 101."""
    server = UwsgiServer(SITE_ENV, cores=2000, extra=["--max-fd", "600"], log_path=tmp_path / "uwsgi.log").start()
    url = f"{server.url}/ws/{facility()}?subscribe-broadcast"

    async def scenario() -> list[object]:
        gate = asyncio.Semaphore(400)

        async def attempt() -> object:
            async with gate:
                try:
                    ws = await aconnect(url, origin=SITE_ORIGIN, open_timeout=30 * TIMING, ping_interval=None)
                except InvalidStatus as refused:
                    response = refused.response
                    return (response.status_code, response.headers.get("Retry-After"))
            return ws

        outcomes = await asyncio.gather(*(attempt() for _ in range(800)))
        await asyncio.sleep(1.0)
        opened = [o for o in outcomes if not isinstance(o, tuple)]
        results: list[object] = ["open" if ws.close_code is None else f"closed {ws.close_code}" for ws in opened]
        results += [o for o in outcomes if isinstance(o, tuple)]
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        server.stop()
    refused = [r for r in results if isinstance(r, tuple)]
    assert set(results) - {"open"} == {(503, "5")}, sorted(set(map(str, results)))  # open, or told to retry
    assert refused  # the limit was reached
    log = server.log_text()
    assert "max-fd is 600" in log  # the operator was told at start-up
    assert "Traceback" not in log
