"""Redis Sentinel: a master, a replica and three sentinels, real servers on free ports.

The websocket worker and the publisher are given the Sentinel form of
``WS4REDIS_CONNECTION``; the master is killed under load, and every
resuming client must get every message the new master holds, once and in
order, or ``!gap``: never a silent hole. With the replica acknowledgement
on (``WS4REDIS_WAIT_REPLICAS``), every accepted message must arrive.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from django.test import override_settings
from websockets.sync.client import connect

from tests.integration.failover import (
    TimedPublisher,
    assert_no_silent_hole,
    assert_ordered_once,
    held_payloads,
    number,
    under_fault,
    worker_on,
)
from tests.integration.helpers import SITE_ORIGIN, client, facility, recv
from tests.servers import TIMING, UwsgiServer, free_port, wait_for
from tests.topologies import SentinelSet
from ws4redis_uwsgi.bus.connection import CONNECTION_RETRIES, DEFAULT_TIMEOUTS, SENTINEL_TIMEOUTS, make_client
from ws4redis_uwsgi.bus.held_connection import HeldConnection
from ws4redis_uwsgi.publisher import NotReplicatedError, RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def sentinel_stack(site_db, tmp_path) -> Iterator[tuple[SentinelSet, UwsgiServer]]:
    with SentinelSet() as sentinels, worker_on(sentinels.url, tmp_path) as server:
        yield sentinels, server


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["url", "dict"])
def test_a_publisher_with_either_form_reaches_a_worker_through_the_sentinels_master(sentinel_stack, form):
    sentinels, server = sentinel_stack
    setting = sentinels.url if form == "url" else sentinels.as_dict()
    fac = facility()
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws, override_settings(WS4REDIS_CONNECTION=setting):
        assert RedisPublisher(facility=fac, broadcast=True).publish_message("through the sentinels", expire=0) == 1
        assert recv(ws) == "through the sentinels"
    master = redis.Redis(port=sentinels.master_port())
    assert master.xlen(f"test:history:broadcast:{fac}") == 1  # on the master the sentinels name


def fail_over(sentinels: SentinelSet) -> None:
    """Kill the master, wait for the sentinels to promote the replica, bring the old master back as its replica."""
    old = sentinels.kill_master()
    sentinels.wait_failover(old)
    sentinels.restart(old)


@pytest.mark.timeout(180)
def test_a_master_killed_under_load_gives_every_message_the_new_master_holds_once_in_order_or_a_gap(sentinel_stack):
    sentinels, server = sentinel_stack
    fac = facility()
    publisher = TimedPublisher(fac, sentinels.url)
    resumers = under_fault(f"{server.url}/ws/{fac}?subscribe-broadcast", publisher, lambda: fail_over(sentinels))

    master = redis.Redis(port=sentinels.master_port())
    assert_no_silent_hole(resumers, publisher, held_payloads(master, f"test:history:broadcast:{fac}"))
    # Never hangs: a publish succeeds on the new master or raises within its timeouts.
    assert publisher.slowest < DEFAULT_TIMEOUTS["socket_timeout"] + DEFAULT_TIMEOUTS["socket_connect_timeout"]
    log = server.log_text()
    assert "Traceback" not in log
    assert "Redis subscription connected" in log.split("Redis subscription lost", 1)[1]  # followed the failover


@pytest.mark.timeout(90)
@pytest.mark.parametrize("acknowledged", [True, False], ids=["wait-on", "wait-off"])
def test_replica_acknowledgement_turns_a_message_a_failover_would_lose_into_an_error(sentinel_stack, acknowledged):
    sentinels, server = sentinel_stack
    fac = facility()
    url = f"{server.url}/ws/{fac}?subscribe-broadcast"
    wait = {"WS4REDIS_WAIT_REPLICAS": 1, "WS4REDIS_WAIT_TIMEOUT": 0.3} if acknowledged else {}
    publisher = RedisPublisher(facility=fac, broadcast=True)
    accepted: list[str] = []

    def publish(text: str) -> None:
        with override_settings(**wait):
            publisher.publish_message(text, expire=0)
        accepted.append(text)

    with connect(f"{url}&resume=", origin=SITE_ORIGIN, open_timeout=10) as ws:
        publish("replicated")
        token, _, _ = str(ws.recv(timeout=10 * TIMING)).partition("\n")
    old = sentinels.master_port()
    (replica,) = [p for p in sentinels.data_ports if p != old]
    # The replica falls behind: frozen, its link cut (so nothing of what follows waits in its socket).
    sentinels.procs[replica].send_signal(signal.SIGSTOP)
    try:
        sentinels.client(old).execute_command("CLIENT", "KILL", "TYPE", "replica")
        if acknowledged:
            with pytest.raises(NotReplicatedError):
                publish("on the master alone")  # the publisher is told
        else:
            publish("on the master alone")  # accepted, as far as the publisher can tell
        sentinels.kill(old)
    finally:
        sentinels.procs[replica].send_signal(signal.SIGCONT)
    new = sentinels.wait_failover(old)
    sentinels.restart(old)  # a replica again, to acknowledge
    # Until it acknowledged its first sync, a new replica is sent nothing: wait until it acknowledges a write.
    probe = redis.Redis(port=new)
    wait_for(lambda: probe.set("probe", 1) and probe.wait(1, 100) == 1, 20, "the replica to acknowledge")
    publish("after the failover")

    with connect(f"{url}&resume={token}", origin=SITE_ORIGIN, open_timeout=10) as ws:
        payloads, gaps = _frames_until(ws, "after the failover")
    assert gaps == 0
    lost = [p for p in accepted[1:] if p not in payloads]
    assert lost == ([] if acknowledged else ["on the master alone"])


def fail_over_gracefully(sentinels: SentinelSet) -> tuple[int, int]:
    """``SENTINEL FAILOVER``, the old master left a master: ``(old, new)`` ports once every sentinel names the new one.

    The sentinels demote an old master that is still up at their next look (0 to 10 s later); denied
    ``REPLICAOF`` it stays a master, as one the sentinels cannot reach while clients still can.
    """
    old = sentinels.master_port()
    sentinels.client(old).execute_command("ACL", "SETUSER", "default", "-replicaof", "-slaveof")
    sentinels.client(sentinels.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", sentinels.master_name)
    return old, sentinels.wait_failover(old)


def _frames_until(ws, last: str) -> tuple[list[str], int]:
    """The payloads ``ws`` receives until ``last``, and the count of ``!gap`` frames among them."""
    payloads: list[str] = []
    gaps = 0
    while last not in payloads:
        header, _, payload = str(ws.recv(timeout=10 * TIMING)).partition("\n")
        if header == "!gap":
            gaps += 1
        else:
            payloads.append(payload)
    return payloads, gaps


@pytest.mark.timeout(180)
def test_a_graceful_failover_moves_the_workers_subscription_within_seconds_and_loses_nothing(sentinel_stack):
    # SENTINEL FAILOVER leaves the old master up, and a master until the sentinels demote it (here never):
    # the worker's subscription must follow the sentinels' word, not wait for the old master to go.
    sentinels, server = sentinel_stack
    fac = facility()
    url = f"{server.url}/ws/{fac}?subscribe-broadcast"
    stream = f"test:history:broadcast:{fac}"
    publisher = TimedPublisher(fac, sentinels.url)
    away: dict[str, str] = {}

    def fault() -> None:
        with connect(f"{url}&resume=", origin=SITE_ORIGIN, open_timeout=10) as ws:  # a client that leaves before the failover
            away["token"], _, away["payload"] = str(ws.recv(timeout=10)).partition("\n")
        _, new = fail_over_gracefully(sentinels)
        promoted = redis.Redis(port=new)
        before = promoted.xlen(stream)
        wait_for(lambda: promoted.xlen(stream) > before, 10, "the publisher to follow")  # within about a second

    resumers = under_fault(url, publisher, fault)

    # What the old master took after the promotion (until the publisher followed, within a second or
    # so) is not on the new master: README "What a failover may lose". Everything else must arrive.
    held = held_payloads(redis.Redis(port=sentinels.master_port()), stream)
    assert len(held) > 150 and set(publisher.accepted[-100:]) <= set(held)
    for resumer in resumers:
        assert resumer.close_codes == []  # live all along: the websockets stayed open
        assert_ordered_once(resumer)
        assert resumer.gaps or [p for p in resumer.payloads if p in set(held)] == held
        # Delivery resumed within seconds of the failover, not whenever the old master goes.
        arrivals = zip(resumer.payloads, resumer.arrived, strict=True)
        late = max(t - publisher.accepted_at[p] for p, t in arrivals if p in publisher.accepted_at)
        assert late < 4 * TIMING
    # The client that left comes back with its token: all the new master holds since, in order, or told.
    with connect(f"{url}&resume={away['token']}", origin=SITE_ORIGIN, open_timeout=10) as ws:
        payloads, gaps = _frames_until(ws, publisher.accepted[-1])
    assert [number(p) for p in payloads] == sorted({number(p) for p in payloads})
    assert gaps or [p for p in payloads if p in set(held)] == [p for p in held if number(p) > number(away["payload"])]
    assert "Traceback" not in server.log_text()
    assert "no enable-threads" not in server.log_text()  # a gevent worker's watch is a greenlet: it runs


@pytest.mark.timeout(60)
def test_without_enough_replicas_a_publish_raises_instead_of_pretending(sentinel_stack):
    sentinels, server = sentinel_stack
    fac = facility()
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with override_settings(WS4REDIS_WAIT_REPLICAS=2, WS4REDIS_WAIT_TIMEOUT=0.2):  # there is one replica
            started = time.monotonic()
            with pytest.raises(NotReplicatedError, match="1 of 2 replicas"):
                RedisPublisher(facility=fac, broadcast=True).publish_message("hoping", expire=0)
            assert time.monotonic() - started < 2
        assert recv(ws) == "hoping"  # published, only not acknowledged: the publisher was told
        with override_settings(WS4REDIS_WAIT_REPLICAS=1):
            RedisPublisher(facility=fac, broadcast=True).publish_message("held twice", expire=0)
        assert recv(ws) == "held twice"
    (replica,) = [p for p in sentinels.data_ports if p != sentinels.master_port()]
    assert redis.Redis(port=replica).xlen(f"test:history:broadcast:{fac}") == 2  # already on the replica


@pytest.mark.timeout(60)
def test_the_command_pool_through_sentinel_never_opens_more_connections_than_its_size(sentinel_stack):
    sentinels, _ = sentinel_stack
    # Named, so that only its own connections count (workers of the stack connect as they like meanwhile).
    pooled = make_client(sentinels.url, max_connections=2, client_name="pool-under-test")
    errors: list[Exception] = []

    def slow_command() -> None:
        try:
            pooled.blpop(["nothing-here"], timeout=0.1)  # holds its connection for 0.1 s
        except Exception as exc:  # a pool that refuses instead of waiting
            errors.append(exc)

    threads = [threading.Thread(target=slow_command) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []  # they waited for a free connection
    opened = [c for c in redis.Redis(port=sentinels.master_port()).client_list() if c["name"] == "pool-under-test"]
    assert 1 <= len(opened) <= 2


@pytest.mark.timeout(60)
def test_the_workers_batched_reads_go_to_the_master_the_sentinels_name_and_follow_it(sentinel_stack):
    # The worker reads history and stored messages on a connection of its own (bus/held_connection.py).
    sentinels, _ = sentinel_stack
    command_client = make_client(sentinels.url, max_connections=8)
    held = HeldConnection(command_client)
    redis.Redis(port=sentinels.master_port()).set("held-read", "on the master")
    assert held.execute([("GET", "held-read")]) == [b"on the master"]
    _, new = fail_over_gracefully(sentinels)
    redis.Redis(port=new).set("held-read", "on the new master")  # not on the old one, still a master
    wait_for(lambda: held.execute([("GET", "held-read")]) == [b"on the new master"], 3, "the read to follow the sentinels")


@pytest.mark.timeout(60)
def test_unreachable_sentinels_at_start_up_leave_the_worker_serving_and_say_so(site_db, tmp_path):
    dead = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    with worker_on(dead, tmp_path) as server:
        started = time.monotonic()
        with connect(f"{server.url}/ws/{facility()}?subscribe-broadcast", origin=SITE_ORIGIN, open_timeout=10) as ws:
            assert time.monotonic() - started < 6 * TIMING  # as with one Redis down: it opens after the subscribe wait
            ws.ping().wait(5)
        wait_for(lambda: "Redis subscription lost" in server.log_text(), 10, "the log line")
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):  # MasterNotFoundError
            RedisPublisher(facility="f", broadcast=True).publish_message("nowhere")
        assert time.monotonic() - started < DEFAULT_TIMEOUTS["socket_connect_timeout"]  # raises, never hangs
    assert "Traceback" not in server.log_text()


class _PatientSentinels(SentinelSet):
    """Sentinels that wait a minute before calling a silent master down: a frozen master stays the master."""

    down_after_ms = 60000
    failover_timeout_ms = 120000


def _publish_time(publisher: RedisPublisher) -> float:
    started = time.monotonic()
    with pytest.raises(redis.RedisError):
        publisher.publish_message("into the void", expire=0)
    return time.monotonic() - started


@pytest.mark.timeout(120)
def test_a_publish_to_a_frozen_master_raises_within_its_timeout_not_once_per_retry(site_db):
    # SIGSTOP: what a master cut off by a partition looks like (connections open, nothing answers).
    with _PatientSentinels() as sentinels, override_settings(WS4REDIS_CONNECTION=sentinels.url):
        publisher = RedisPublisher(facility=facility(), broadcast=True)
        publisher.publish_message("warm", expire=0)
        master = sentinels.procs[sentinels.master_port()]
        master.send_signal(signal.SIGSTOP)
        try:
            slack = 1.0 * TIMING
            one_timeout = max(DEFAULT_TIMEOUTS.values())
            assert _publish_time(publisher) < one_timeout + slack  # on its pooled connection
            assert _publish_time(publisher) < one_timeout + slack  # on a new connection
            for port in sentinels.sentinel_ports:  # the sentinels frozen too
                sentinels.procs[port].send_signal(signal.SIGSTOP)
            finding_the_master = (CONNECTION_RETRIES + 1) * len(sentinels.sentinel_ports) * max(SENTINEL_TIMEOUTS.values())
            assert (
                _publish_time(RedisPublisher(facility=facility(), broadcast=True)) < max(one_timeout, finding_the_master) + slack
            )
        finally:
            for proc in sentinels.procs.values():
                proc.send_signal(signal.SIGCONT)
        assert RedisPublisher(facility=facility(), broadcast=True).publish_message("thawed", expire=0) == 0
