"""Nothing lost across a reconnect: message ids, resume, gaps, and faults under load.

A resuming client (``?resume=<last id>``) gets every message as
``<id>\\n<payload>`` and, after a reconnect, exactly what it missed, in
order, once. The fault tests count every message id a publisher got back.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import psutil
import pytest
import redis
from django.test import override_settings
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from tests.conftest import SITE_ENV
from tests.integration.helpers import SITE_ORIGIN, client, close_of, facility, raw_websocket, recv, split
from tests.servers import TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi.core.close_codes import CloseCode, retry_hint
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
def test_resume_replays_exactly_what_was_missed(uwsgi_server):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        publisher.publish_message("one", expire=0)
        token, payload = split(recv(ws))
        assert payload == "one" and token
    for text in ("two", "three", "four"):
        publisher.publish_message(text, expire=0)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={token}") as ws:
        frames = [split(recv(ws)) for _ in range(3)]
        assert [payload for _, payload in frames] == ["two", "three", "four"]
        assert len({t for t, _ in frames} | {token}) == 4  # every message moves the token on
        publisher.publish_message("five", expire=0)  # live again, no repeats in between
        assert split(recv(ws))[1] == "five"
    # The token in front of "three" resumes right after it.
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={frames[1][0]}") as ws:
        assert [split(recv(ws))[1] for _ in range(2)] == ["four", "five"]


@pytest.mark.timeout(60)
def test_a_message_on_two_of_my_channels_arrives_once(uwsgi_server, login):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-user&subscribe-group&subscribe-broadcast", login("john")) as ws:
        RedisPublisher(facility=fac, users=["john"], groups=["cooks"]).publish_message("twice addressed", expire=0)
        assert recv(ws) == "twice addressed"
        RedisPublisher(facility=fac, broadcast=True).publish_message("sentinel", expire=0)
        assert recv(ws) == "sentinel"


@pytest.mark.timeout(60)
def test_resume_after_the_history_was_trimmed_reports_a_gap(uwsgi_server, redis_client):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    publisher.publish_message("seen", expire=0)
    seen = publisher.last_message_id
    with override_settings(WS4REDIS_HISTORY_LENGTH=5):  # the publisher trims; the worker only reads
        for i in range(8):
            publisher.publish_message(f"m{i}", expire=0)
    assert redis_client.xlen(f"test:history:broadcast:{fac}") == 5
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={seen}") as ws:
        assert recv(ws) == "!gap\n"
        assert [split(recv(ws))[1] for _ in range(5)] == [f"m{i}" for i in range(3, 8)]


@pytest.mark.timeout(60)
def test_a_token_from_a_history_that_was_lost_reports_a_gap(uwsgi_server, redis_client):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        publisher.publish_message("m1", expire=0)
        token, _ = split(recv(ws))
    publisher.publish_message("m2", expire=0)  # accepted, then lost
    publisher.publish_message("m3", expire=0)
    redis_client.delete(f"test:history:broadcast:{fac}")  # as on a replica that never had the stream
    publisher.publish_message("m4", expire=0)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={token}") as ws:
        assert recv(ws) == "!gap\n"
        assert split(recv(ws))[1] == "m4"


@pytest.mark.timeout(60)
def test_the_first_message_of_a_channel_is_no_gap_for_a_client_that_got_nothing_there(uwsgi_server, login):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-user&subscribe-broadcast&resume=", login("john")) as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("news", expire=0)
        token, _ = split(recv(ws))  # a position on the broadcast, the arrival on the user channel
    RedisPublisher(facility=fac, users=["john"]).publish_message("first for john", expire=0)  # makes the stream
    with client(uwsgi_server, f"/ws/{fac}?subscribe-user&subscribe-broadcast&resume={token}", login("john")) as ws:
        assert split(recv(ws))[1] == "first for john"


def test_a_malformed_resume_id_is_refused(uwsgi_server):
    with pytest.raises(InvalidStatus) as refused:
        with client(uwsgi_server, f"/ws/{facility()}?subscribe-broadcast&resume=yesterday"):
            pass
    assert refused.value.response.status_code == 400


class ResumingClient:
    """Stays connected to a facility, reconnecting with ``resume=<last id>`` like ws4redis.js."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_id = ""
        self.payloads: list[str] = []
        self.ids: list[str] = []
        self.arrived: list[float] = []  # time.monotonic() at which each payload arrived
        self.gaps = 0
        self.close_codes: list[int | None] = []
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                url = f"{self.url}&resume={self.last_id}"
                async with aconnect(url, origin=SITE_ORIGIN, open_timeout=5, close_timeout=2) as ws:
                    self.connected.set()
                    stopping = asyncio.ensure_future(stop.wait())
                    while True:
                        receiving = asyncio.ensure_future(ws.recv())
                        done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                        if stopping in done:
                            receiving.cancel()
                            return
                        header, _, payload = receiving.result().partition("\n")
                        if header == "!gap":
                            self.gaps += 1
                            continue
                        self.last_id = header
                        self.ids.append(header)
                        self.payloads.append(payload)
                        self.arrived.append(time.monotonic())
            except ConnectionClosed as closed:
                self.close_codes.append(closed.rcvd.code if closed.rcvd else None)
            except (OSError, InvalidStatus, InvalidURI, TimeoutError):
                self.close_codes.append(None)
            self.connected.clear()
            await asyncio.sleep(0.05)


class Publisher(threading.Thread):
    """Publishes numbered messages until stopped; remembers which ones Redis accepted."""

    def __init__(self, facility_name: str, redis_url: str, interval: float = 0.004) -> None:
        super().__init__(daemon=True)
        self.facility = facility_name
        self.redis_url = redis_url
        self.interval = interval
        self.accepted: list[str] = []
        self.refused = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with override_settings(WS4REDIS_CONNECTION=self.redis_url):
            publisher = RedisPublisher(facility=self.facility, broadcast=True)
            n = 0
            while not self.stop.is_set():
                try:
                    publisher.publish_message(f"n{n}", expire=0)
                    self.accepted.append(f"n{n}")
                except redis.RedisError:
                    self.refused += 1  # the publisher knows: this one was never sent
                n += 1
                time.sleep(self.interval)


async def under_load(url: str, redis_url: str, fault, clients: int = 10) -> tuple[Publisher, list[ResumingClient]]:
    """Run ``fault()`` while a publisher publishes and resuming clients listen; then let everything settle."""
    stop = asyncio.Event()
    resumers = [ResumingClient(url) for _ in range(clients)]
    tasks = [asyncio.ensure_future(r.run(stop)) for r in resumers]
    await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in resumers)), 20 * TIMING)
    publisher = Publisher(url.rsplit("/", 1)[1].split("?")[0], redis_url)
    publisher.start()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(fault)
    await asyncio.sleep(1.0)
    publisher.stop.set()
    await asyncio.to_thread(publisher.join)
    deadline = time.monotonic() + 30 * TIMING
    while time.monotonic() < deadline and any(len(r.payloads) < len(publisher.accepted) for r in resumers):
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)
    return publisher, resumers


def assert_nothing_lost(publisher: Publisher, resumers: list[ResumingClient]) -> None:
    assert len(publisher.accepted) > 100
    for resumer in resumers:
        assert resumer.payloads == publisher.accepted  # every accepted message, once, in order
        assert resumer.gaps == 0


@pytest.mark.timeout(120)
def test_redis_killed_and_restarted_under_load_loses_nothing(private_stack):
    redis_server, server = private_stack

    def restart_redis() -> None:
        redis_server.kill()
        time.sleep(0.5)
        redis_server.start()

    url = f"{server.url}/ws/{facility()}?subscribe-broadcast"
    publisher, resumers = asyncio.run(under_load(url, redis_server.url, restart_redis))
    assert publisher.refused > 0  # the publisher saw the outage
    assert_nothing_lost(publisher, resumers)
    assert not any(r.close_codes for r in resumers)  # the websockets stayed open throughout


@pytest.mark.timeout(120)
def test_worker_killed_under_load_loses_nothing(private_stack):
    redis_server, server = private_stack

    def kill_worker() -> None:
        (old,) = server.worker_pids()
        psutil.Process(old).kill()
        wait_for(lambda: server.worker_pids() and server.worker_pids() != [old], 20, "a new worker")

    url = f"{server.url}/ws/{facility()}?subscribe-broadcast"
    publisher, resumers = asyncio.run(under_load(url, redis_server.url, kill_worker))
    assert_nothing_lost(publisher, resumers)
    assert all(r.close_codes for r in resumers)  # every client was cut off and came back


@pytest.mark.timeout(120)
def test_graceful_reload_closes_with_1012_and_loses_nothing(private_stack):
    redis_server, server = private_stack

    def reload_workers() -> None:
        (old,) = server.worker_pids()
        server.proc.send_signal(signal.SIGHUP)  # what `uwsgi --reload` and a touched vassal file do
        wait_for(lambda: server.worker_pids() and server.worker_pids() != [old], 30, "the reloaded worker")

    url = f"{server.url}/ws/{facility()}?subscribe-broadcast"
    publisher, resumers = asyncio.run(under_load(url, redis_server.url, reload_workers))
    assert_nothing_lost(publisher, resumers)
    for resumer in resumers:
        assert 1012 in resumer.close_codes, resumer.close_codes


@pytest.mark.timeout(60)
def test_a_reload_spreads_its_clients_return_over_the_seconds_a_worker_takes_to_serve_them(redis_server, site_db, tmp_path):
    """20 websockets, at 10 handshakes a second: each 1012 asks its client to wait its own part of 2 s."""
    env = {**SITE_ENV, "WS4REDIS_TEST_RESTART_RATE": "10"}
    server = UwsgiServer(env, cores=100, log_path=tmp_path / "uwsgi.log").start()
    try:
        sockets = [raw_websocket(server, f"/ws/{facility()}?subscribe-broadcast") for _ in range(20)]
        server.proc.send_signal(signal.SIGHUP)  # what `uwsgi --reload` and a touched vassal file do
        closes = [close_of(sock, 10) for sock in sockets]
    finally:
        server.stop()
    assert all(close is not None and close[0] == CloseCode.SERVICE_RESTART for close in closes), closes
    waits = [retry_hint(reason) for _, reason in closes]  # type: ignore[misc]
    assert all(wait is not None and 0 <= wait <= 2.0 for wait in waits), closes
    assert len(set(waits)) > 10, waits  # drawn for each client: they do not come back together


@pytest.mark.timeout(60)
def test_a_token_of_an_earlier_version_resumes_as_that_position_on_every_channel(uwsgi_server, login):
    """Earlier versions sent one id for all channels (``<ms>-<seq>``); a client may come back with one after an upgrade."""
    fac = facility()
    before = f"{int(time.time() * 1000) - 1}-0"
    for text in ("to everyone", "to john"):
        publisher = (
            RedisPublisher(facility=fac, broadcast=True)
            if text == "to everyone"
            else RedisPublisher(facility=fac, users=["john"])
        )
        publisher.publish_message(text, expire=0)
    query = f"subscribe-broadcast&subscribe-user&resume={before}"
    with client(uwsgi_server, f"/ws/{fac}?{query}", login("john")) as ws:
        frames = [split(recv(ws)) for _ in range(2)]
        assert [payload for _, payload in frames] == ["to everyone", "to john"]
        token = frames[-1][0]
    with client(uwsgi_server, f"/ws/{fac}?{query.replace(before, token)}", login("john")) as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("next", expire=0)
        assert split(recv(ws))[1] == "next"  # the token it got now resumes after both


@pytest.mark.timeout(60)
def test_after_a_gap_the_sites_hook_pushes_fresh_state_before_anything_else(uwsgi_server, login):
    fac = f"gap-{facility()}"
    publisher = RedisPublisher(facility=fac, users=["john"])
    publisher.publish_message("seen", expire=0)
    with override_settings(WS4REDIS_HISTORY_LENGTH=2):
        for text in ("lost", "kept 1", "kept 2"):
            publisher.publish_message(text, expire=0)
    ahead = f"{int(time.time() * 1000) + 3_600_000}-0"  # one the server cannot have given out
    for token, after in ((f"{int(time.time() * 1000) - 60_000}-0", ["kept 1", "kept 2"]), (ahead, [])):
        with client(uwsgi_server, f"/ws/{fac}?subscribe-user&subscribe-broadcast&resume={token}", login("john")) as ws:
            assert recv(ws) == "!gap\n"
            state_token, state = split(recv(ws))
            assert state == f"state of {fac} for john on 2 channel(s)" and state_token  # framed like any message
            assert [split(recv(ws))[1] for _ in after] == after  # then what history still holds
            publisher.publish_message("live", expire=0)
            assert split(recv(ws))[1] == "live"


@pytest.mark.timeout(60)
def test_a_failing_gap_hook_leaves_the_client_with_the_gap_and_the_log_with_the_reason(uwsgi_server):
    fac = f"gap-broken-{facility()}"
    ahead = f"{int(time.time() * 1000) + 3_600_000}-0"
    start = len(uwsgi_server.log_text())
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={ahead}") as ws:
        assert recv(ws) == "!gap\n"
        RedisPublisher(facility=fac, broadcast=True).publish_message("live", expire=0)
        assert split(recv(ws))[1] == "live"
    assert "WS4REDIS_ON_GAP failed" in uwsgi_server.log_text()[start:]
