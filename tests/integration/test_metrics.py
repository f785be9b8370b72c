"""Each worker's metrics and health on its loopback port, scraped after real traffic.

Two uWSGI workers behind one port, a private redis-server (so that the
health check can watch it go away), real websocket clients. The counts are
summed over the workers, as Prometheus does with ``sum``.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import defaultdict
from contextlib import ExitStack

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from tests.conftest import SITE_ENV, session_cookie
from tests.integration.helpers import (
    client,
    close_code_of,
    facility,
    left_in_outbox,
    logged_as_slow_consumer,
    raw_websocket,
    recv,
)
from tests.integration.test_identity_claim import hearing, page
from tests.integration.test_live_auth import closed_with, login, logout, new_user
from tests.servers import TIMING, RedisServer, UwsgiServer, free_port, wait_for
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher
from ws4redis_uwsgi.server.limits import PENDING_WRITE_TIMEOUT, SEND_TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WORKERS = 2


@pytest.fixture
def start_stack(site_db, tmp_path):
    """Starts a private Redis and a two-worker uWSGI whose workers serve metrics on ``base`` and ``base + 1``.

    Keyword arguments add to the site's environment (``WS4REDIS_TEST_MAX_PENDING="5"``, ...).
    """
    from django.test import override_settings

    with ExitStack() as stack:

        def start(**more_env: str) -> tuple[RedisServer, UwsgiServer, list[int]]:
            redis_server = RedisServer(workdir=tmp_path).start()
            stack.callback(redis_server.stop)
            base = free_port()
            while not all(port_free(base + i) for i in range(WORKERS)):
                base = free_port()
            env = {**SITE_ENV, "WS4REDIS_TEST_REDIS": redis_server.url, "WS4REDIS_TEST_METRICS_PORT": str(base), **more_env}
            server = UwsgiServer(env, cores=100, extra=["--workers", str(WORKERS)], log_path=tmp_path / "uwsgi.log")
            server.start()
            stack.callback(server.stop)
            stack.enter_context(override_settings(WS4REDIS_CONNECTION=redis_server.url))
            ports = [base + i for i in range(WORKERS)]
            wait_for(lambda: all(health(p)[0] == 200 for p in ports), 20, f"every worker's health (see {server.log_path})")
            return redis_server, server, ports

        yield start


@pytest.fixture
def stack(start_stack):
    """A private Redis and a two-worker uWSGI with the site's settings."""
    return start_stack()


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def health(port: int) -> tuple[int, str]:
    try:
        return get(port, "/health")
    except OSError:
        return 0, "not listening"


def scrape(ports: list[int]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of every worker, summed over the workers (the ``worker`` label dropped)."""
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for port in ports:
        status, text = get(port, "/metrics")
        assert status == 200
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "worker"))
                totals[sample.name, labels] += sample.value
    return totals


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
def test_the_counts_follow_real_traffic(stack):
    _, server, ports = stack
    fac = facility()
    with ExitStack() as sockets:
        plain = [sockets.enter_context(client(server, f"/ws/{fac}?subscribe-broadcast")) for _ in range(6)]
        talker = sockets.enter_context(client(server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast"))
        john = sockets.enter_context(client(server, f"/ws/{fac}?subscribe-user", session_cookie("john")))
        for _ in range(3):
            with pytest.raises(InvalidStatus):  # not staff: 403
                sockets.enter_context(client(server, "/ws/staff-only?subscribe-broadcast", session_cookie("john")))
        publisher = RedisPublisher(facility=fac, broadcast=True)
        for n in range(5):
            publisher.publish_message(f"m{n}", expire=0)
        for ws in [*plain, talker]:
            assert [recv(ws) for _ in range(5)] == [f"m{n}" for n in range(5)]
        talker.send("from a client")
        for ws in plain:
            assert recv(ws) == "from a client"
        talker.send("--heartbeat--")
        assert recv(talker) == "--heartbeat--"
        with client(server, f"/ws/{fac}?subscribe-broadcast&resume=0-0") as resumed:
            assert recv(resumed).startswith("!gap")
        sockets.enter_context(client(server, f"/ws/presence-{fac}?subscribe-broadcast"))
        figures = scrape(ports)
        assert figures["ws4redis_presence_connections", ()] == 1
        assert figures["ws4redis_websockets_open", (("facility", fac),)] == 8
        assert figures["ws4redis_handshakes_total", (("outcome", "accepted"),)] == 10
        assert figures["ws4redis_handshakes_total", (("outcome", "403"),)] == 3
        assert figures["ws4redis_handshake_seconds_count", ()] == 10
        # 6 broadcasts to the 7 websockets on the channel, whichever worker serves them (the
        # talker's own one is handed to it too, and skipped: no echo asked for).
        delivered = sum(v for (name, labels), v in figures.items() if name == "ws4redis_deliveries_total")
        assert delivered == 6 * 7
        fast = figures["ws4redis_deliveries_total", (("path", "fast"),)]
        queued = figures["ws4redis_deliveries_total", (("path", "queued"),)]
        assert fast > 0 and fast + queued == delivered  # clients that keep up are written to at once
        assert figures["ws4redis_client_messages_total", ()] == 1
        assert figures["ws4redis_heartbeats_total", ()] == 1
        assert figures["ws4redis_resumes_total", ()] == 1
        assert figures["ws4redis_gaps_total", ()] == 1
        assert figures["ws4redis_redis_subscribed", ()] == WORKERS
        assert figures["ws4redis_slow_consumer_closes_total", ()] == 0
        assert figures["ws4redis_sessions_ended_total", ()] == 0
        # Where the handshakes' users came from: no cookie (the 7 plain ones and the talker, the
        # resumed and the presence one), or john's session, read or (on the same worker) kept.
        assert figures["ws4redis_handshake_identities_total", (("source", "none"),)] == 9
        john_reads = [figures.get(("ws4redis_handshake_identities_total", (("source", s),)), 0) for s in ("database", "cache")]
        assert john_reads[0] >= 1 and sum(john_reads) == 4
        assert john is not None
        # A logout closes that session's websocket with 4001, and it is counted.
        user = new_user()
        cookie, key = login(user)
        with client(server, f"/ws/{fac}?subscribe-user", cookie) as tab:
            started = time.monotonic()
            logout(key, user)
            assert closed_with(tab, started)[0] == CloseCode.SESSION_ENDED
        assert scrape(ports)["ws4redis_sessions_ended_total", ()] == 1
        # A page's identity claim lets a handshake in without reading, and is counted as such.
        hearing(server)
        with client(server, f"/ws/{fac}?subscribe-user", page(new_user())[0]):
            pass
        assert scrape(ports)["ws4redis_handshake_identities_total", (("source", "claim"),)] == 1
    # Closed: the gauge goes back down.
    wait_for(lambda: scrape(ports)["ws4redis_websockets_open", (("facility", fac),)] == 0, 5, "the websockets counted closed")


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
@pytest.mark.timeout(120)
def test_a_client_that_never_reads_is_counted_as_closed_for_falling_behind(start_stack):
    """Closed with 4000 once it fell behind, or reset then if a write to it waited: at once either way, and counted."""
    _, server, ports = start_stack(WS4REDIS_TEST_MAX_PENDING="5")
    fac = facility()
    path = f"/ws/{fac}?subscribe-broadcast"
    stuck = raw_websocket(server, path, rcvbuf=4096)  # it never reads
    publisher = RedisPublisher(facility=fac, broadcast=True)
    payload = "x" * 16_000
    with client(server, path) as reader:

        def closed_for_falling_behind() -> bool:
            # In bursts: what reaches the worker while the stuck client's socket is full waits for it. A burst
            # stays below the limit of 5, so the reader, however slowly this machine lets it read, is never
            # 5 behind; the stuck client's backlog grows from burst to burst until it is more than 5.
            for _ in range(4):
                publisher.publish_message(payload, expire=0)
            assert [recv(reader) for _ in range(4)] == [payload] * 4  # a client that reads keeps getting everything
            return scrape(ports)["ws4redis_slow_consumer_closes_total", ()] == 1

        # Well before any write's timeout (PENDING_WRITE_TIMEOUT, SEND_TIMEOUT): the client is given up on as soon
        # as more than 5 messages wait for it, even while a write to it waits.
        assert PENDING_WRITE_TIMEOUT < SEND_TIMEOUT
        wait_for(closed_for_falling_behind, PENDING_WRITE_TIMEOUT - 2, "the client that never reads to be closed")
        publisher.publish_message("after", expire=0)
        assert recv(reader) == "after"
        figures = scrape(ports)
    assert close_code_of(stuck) in (CloseCode.SLOW_CONSUMER, None)  # the close frame, when it got through
    stuck.close()
    assert figures["ws4redis_slow_consumer_closes_total", ()] == 1
    assert figures["ws4redis_websockets_open", (("facility", fac),)] == 1  # the reader
    assert figures["ws4redis_deliveries_total", (("path", "queued"),)] > 5  # what waited for it
    assert figures["ws4redis_deliveries_total", (("path", "fast"),)] > 0
    assert logged_as_slow_consumer(server.log_text(), 5)


def test_the_outbox_drain_is_counted(start_stack):
    from ws4redis_uwsgi.models import OutboxMessage

    redis_server, server, ports = start_stack(WS4REDIS_TEST_OUTBOX_DRAIN="0.3", WS4REDIS_TEST_OUTBOX_GRACE="1")
    fac = facility()
    assert scrape(ports)["ws4redis_outbox_published_total", ()] == 0
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws:
        left_in_outbox(fac, b"left behind")
        assert ws.recv(timeout=10 * TIMING) == "left behind"
    wait_for(lambda: not OutboxMessage.objects.filter(facility=fac).exists(), 10, "the drain to delete the row")
    # The drain counts a round's messages when the round ends, a moment after the delete (its Redis lock is
    # released in between): wait for the count, then check that it is one, by one worker's drain.
    wait_for(lambda: scrape(ports)["ws4redis_outbox_published_total", ()] > 0, 10, "the drain to count it")
    figures = scrape(ports)
    assert figures["ws4redis_outbox_published_total", ()] == 1  # by one worker's drain, once
    assert figures["ws4redis_outbox_failed_rounds_total", ()] == 0
    redis_server.stop()
    wait_for(lambda: scrape(ports)["ws4redis_outbox_failed_rounds_total", ()] >= WORKERS, 20, "every drain to fail a round")


def test_health_answers_503_while_redis_is_away(stack):
    redis_server, _, ports = stack
    redis_server.stop()
    wait_for(lambda: all(health(p)[0] == 503 for p in ports), 10, "503 from every worker")
    assert all(scrape(ports)[name, ()] == 0 for name in ["ws4redis_redis_subscribed"])
    redis_server.start()
    wait_for(lambda: all(health(p)[0] == 200 for p in ports), 15, "200 again")
    assert scrape(ports)["ws4redis_redis_reconnects_total", ()] >= WORKERS


def test_each_worker_s_garbage_collector_is_counted_by_generation(stack):
    """Full collections (generation 2) pause the worker for as long as it walks every open websocket."""
    _, server, ports = stack
    fac = facility()
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("hello", expire=0)
        assert recv(ws) == "hello"
        figures = scrape(ports)
    for generation in "012":
        assert ("ws4redis_gc_collections_total", (("generation", generation),)) in figures
        assert ("ws4redis_gc_objects_uncollectable_total", (("generation", generation),)) in figures
    assert figures["ws4redis_gc_collections_total", (("generation", "0"),)] > 0  # two workers' own counts, summed
    # each generation its own figure: full collections come only after many collections of the middle one
    collections = {g: figures["ws4redis_gc_collections_total", (("generation", g),)] for g in "012"}
    assert collections["2"] < collections["1"] < collections["0"]


def test_neither_is_served_on_the_websocket_port(stack):
    _, server, ports = stack
    for path in ("/metrics", "/health"):
        status, body = get(server.port, path)
        assert status != 200 and "ws4redis_" not in body
    assert get(ports[0], "/other") == (404, "not found\n")


def test_a_publish_from_django_is_counted_in_the_publish_latency_histogram(redis_server, site_db):
    """The sync publish_message (a view's): each publish once, when it goes out, failed ones included."""
    import redis
    from django.db import transaction
    from django.test import override_settings
    from prometheus_client import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("ws4redis_publish_seconds_count") or 0

    def total_seconds() -> float:
        return REGISTRY.get_sample_value("ws4redis_publish_seconds_sum") or 0

    before, seconds = count(), total_seconds()
    publisher = RedisPublisher(facility=facility(), broadcast=True)
    assert publisher.publish_message("timed", expire=0) == 0  # no worker subscribes: published all the same
    assert count() == before + 1 and total_seconds() > seconds
    with transaction.atomic():
        publisher.publish_message("after the commit", expire=0, on_commit=True)
        assert count() == before + 1  # not out yet
    assert count() == before + 2
    with override_settings(WS4REDIS_CONNECTION="redis://127.0.0.1:1/0"), pytest.raises(redis.ConnectionError):
        RedisPublisher(facility=facility(), broadcast=True).publish_message("Redis away", expire=0)
    assert count() == before + 3
