"""Redis Cluster: three masters and three replicas, real servers on free ports (``redis-cli --cluster create``).

The websocket worker and the publisher are given ``redis+cluster://``:
messages must travel by sharded pub/sub only, the worker must hold one
pub/sub connection per shard, resume must work across shards, and a master
killed under load or a slot migrated must lose nothing silently.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from django.test import override_settings
from websockets.sync.client import connect

from tests.conftest import SITE_ENV
from tests.integration.failover import (
    TimedPublisher,
    assert_no_silent_hole,
    assert_ordered_once,
    held_payloads,
    number,
    under_fault,
    worker_on,
)
from tests.integration.helpers import SITE_ORIGIN, client, facility, recv, split
from tests.integration.test_commands import ws4redis
from tests.servers import TIMING, UwsgiServer, port_open, wait_for
from tests.topologies import ClusterSet, PatientClusterSet
from ws4redis_uwsgi.bus.connection import DEFAULT_TIMEOUTS
from ws4redis_uwsgi.core.channels import Audience, channel_name
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster_stack(site_db, tmp_path) -> Iterator[tuple[ClusterSet, UwsgiServer]]:
    with ClusterSet() as cluster, worker_on(cluster.url, tmp_path) as server:
        yield cluster, server


def pubsub_clients(cluster: ClusterSet, port: int) -> list[dict]:
    return [c for c in cluster.client(port).client_list(_type="pubsub")]


HISTORY_OFF = {"WS4REDIS_HISTORY_LENGTH": 0, "WS4REDIS_HISTORY_SECONDS": 0}


def owner(cluster: ClusterSet, name: str) -> int:
    return cluster.master_for_slot(cluster.keyslot(name))


def channel(audience: Audience, fac: str, name: str | None = None) -> str:
    return channel_name("test", audience, fac, name, sharded=True)


@pytest.mark.timeout(120)
def test_channels_spread_over_every_shard_by_sharded_pub_sub_with_one_connection_per_shard(cluster_stack, login):
    cluster, server = cluster_stack
    facilities = [facility() for _ in range(6)]
    while {owner(cluster, channel(Audience.BROADCAST, f)) for f in facilities} != set(cluster.masters()):
        facilities.append(facility())  # until the test's channels live on all three shards
    query = "subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"
    john = login("john")  # in the group "cooks" (tests/conftest.py)
    session_key = john.partition("=")[2]
    with contextlib.ExitStack() as stack:
        sockets = {f: stack.enter_context(client(server, f"/ws/{f}?{query}", john)) for f in facilities}
        anonymous = {f: stack.enter_context(client(server, f"/ws/{f}?subscribe-broadcast")) for f in facilities}
        for f in facilities:
            RedisPublisher(facility=f, broadcast=True).publish_message(f"all on {f}", expire=0)
            RedisPublisher(facility=f, users=["john"]).publish_message(f"john on {f}", expire=0)
            RedisPublisher(facility=f, groups=["cooks"]).publish_message(f"cooks on {f}", expire=0)
            RedisPublisher(facility=f, sessions=[session_key]).publish_message(f"session on {f}", expire=0)
            # On three of john's channels, on up to three shards: he gets it once.
            RedisPublisher(facility=f, broadcast=True, users=["john"], groups=["cooks"]).publish_message(f"once on {f}")
            RedisPublisher(facility=f, broadcast=True).publish_message(f"end of {f}", expire=0)
        for f in facilities:
            # Six messages, each once. Their order holds within a channel only: john's channels live on
            # several shards, read on several connections, so "end" may overtake the session's message.
            got = [recv(sockets[f]) for _ in range(6)]
            assert sorted(got) == sorted(
                [f"all on {f}", f"john on {f}", f"cooks on {f}", f"session on {f}", f"once on {f}", f"end of {f}"]
            )
            assert [recv(anonymous[f]) for _ in range(3)] == [f"all on {f}", f"once on {f}", f"end of {f}"]

        names = [channel(Audience.BROADCAST, f) for f in facilities] + [channel(Audience.USER, f, "john") for f in facilities]
        owners = {cluster.master_for_slot(cluster.keyslot(n)) for n in names}
        assert owners == set(cluster.masters())  # the test's channels live on all three shards
        for port in cluster.masters():
            node = cluster.client(port)
            assert node.execute_command("PUBSUB", "CHANNELS") == []  # never classic pub/sub
            shard_channels = set(node.execute_command("PUBSUB", "SHARDCHANNELS"))
            assert {n for n in names if cluster.master_for_slot(cluster.keyslot(n)) == port} <= shard_channels
            # One pub/sub connection per shard for 12 websockets, not one per websocket.
            assert len(pubsub_clients(cluster, port)) == 1
    for port in cluster.ports:
        assert cluster.client(port).execute_command("PUBSUB", "CHANNELS") == []


@pytest.mark.timeout(120)
def test_resume_across_shards_gives_exactly_what_was_missed(cluster_stack, login):
    cluster, server = cluster_stack
    fac = facility()
    query = "subscribe-broadcast&subscribe-user&subscribe-group&resume="
    john = login("john")
    audiences = [{"broadcast": True}, {"users": ["john"]}, {"groups": ["cooks"]}]
    names = [channel(Audience.BROADCAST, fac), channel(Audience.USER, fac, "john"), channel(Audience.GROUP, fac, "cooks")]
    while len({cluster.master_for_slot(cluster.keyslot(n)) for n in names}) < 2:  # make the channels span shards
        fac = facility()
        names = [channel(Audience.BROADCAST, fac), channel(Audience.USER, fac, "john"), channel(Audience.GROUP, fac, "cooks")]

    def publish(i: int) -> str:
        # One channel at a time, and every fifth message on all three at once.
        chosen = audiences[i % 3] if i % 5 else {k: v for a in audiences for k, v in a.items()}
        RedisPublisher(facility=fac, **chosen).publish_message(f"m{i}", expire=0)
        return f"m{i}"

    with client(server, f"/ws/{fac}?{query}", john) as ws:
        seen = [publish(i) for i in range(20)]
        frames = [split(recv(ws)) for _ in range(20)]
    assert sorted(p for _, p in frames) == sorted(seen)
    token = frames[-1][0]
    missed = [publish(i) for i in range(20, 120)]
    with client(server, f"/ws/{fac}?{query.replace('resume=', f'resume={token}')}", john) as ws:
        got = [split(recv(ws))[1] for _ in range(100)]
        assert sorted(got, key=number) == missed and len(set(got)) == 100  # every one, once
        for index, name in enumerate(names):
            on_channel = [m for m in missed if number(m) % 5 == 0 or number(m) % 3 == index]
            assert [m for m in got if m in on_channel] == on_channel, name  # in order within a channel
        RedisPublisher(facility=fac, broadcast=True).publish_message("live", expire=0)
        assert split(recv(ws))[1] == "live"


@pytest.mark.timeout(180)
def test_a_master_killed_under_load_gives_every_message_the_new_master_holds_once_in_order_or_a_gap(cluster_stack):
    cluster, server = cluster_stack
    fac = facility()
    name = channel(Audience.BROADCAST, fac)
    victim = cluster.master_for_slot(cluster.keyslot(name))
    publisher = TimedPublisher(fac, cluster.url)

    def fail_over() -> None:
        cluster.kill_master(victim)
        cluster.wait_failover(victim)

    resumers = under_fault(f"{server.url}/ws/{fac}?subscribe-broadcast", publisher, fail_over)
    new_master = cluster.client(cluster.master_for_slot(cluster.keyslot(name)), decode=False)
    assert_no_silent_hole(resumers, publisher, held_payloads(new_master, f"test:history:{{broadcast:{fac}}}"))
    assert "Traceback" not in server.log_text()


@pytest.mark.timeout(120)
def test_a_slot_migrated_under_load_is_followed_and_nothing_is_lost_silently(cluster_stack):
    cluster, server = cluster_stack
    fac = facility()
    name = channel(Audience.BROADCAST, fac)
    slot = cluster.keyslot(name)
    source = cluster.master_for_slot(slot)
    (destination, *_) = [p for p in cluster.masters() if p != source]
    publisher = TimedPublisher(fac, cluster.url)
    followed: list[bool] = []

    def check_followed() -> None:
        # The worker subscribed the channel on its new shard (while its clients are still there).
        followed.append(name.encode() in cluster.client(destination, decode=False).execute_command("PUBSUB", "SHARDCHANNELS"))

    resumers = under_fault(
        f"{server.url}/ws/{fac}?subscribe-broadcast",
        publisher,
        lambda: cluster.migrate_slot(slot, destination),
        clients=4,
        before_leaving=check_followed,
    )
    assert cluster.master_for_slot(slot) == destination
    for resumer in resumers:
        assert_ordered_once(resumer)
        # Every publish that returned arrived: a migration loses nothing (publishes that raised may or may not).
        assert [p for p in resumer.payloads if p in set(publisher.accepted)] == publisher.accepted
    assert followed == [True]
    assert "Redis Cluster moved" in server.log_text()
    assert "Traceback" not in server.log_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("history", [pytest.param({}, id="history-on"), pytest.param(HISTORY_OFF, id="history-off")])
def test_a_publish_to_many_users_follows_a_slot_that_moved_since_the_publisher_learnt_the_slots(cluster_stack, history):
    cluster, _ = cluster_stack
    fac = facility()
    names = [f"m{i}" for i in range(12)]
    with override_settings(**history):
        publisher = RedisPublisher(facility=fac, users=names)
        publisher.publish_message("before", expire=60)  # the publisher's client learns the slots
        slot = cluster.keyslot(channel(Audience.USER, fac, names[0]))
        destination = next(p for p in cluster.masters() if p != cluster.master_for_slot(slot))
        cluster.migrate_slot(slot, destination)
        publisher.publish_message("after", expire=60)  # its shard answers MOVED for that one
    for name in names:
        key = channel(Audience.USER, fac, name)
        stored = cluster.client(owner(cluster, key), decode=False).get(key)
        assert stored is not None and b"after" in stored, name


@pytest.mark.timeout(60)
def test_an_unreachable_cluster_at_start_up_leaves_the_worker_serving_and_says_so(site_db, tmp_path):
    from tests.servers import free_port

    dead = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    server = UwsgiServer({**SITE_ENV, "WS4REDIS_TEST_REDIS": dead}, cores=20, log_path=tmp_path / "uwsgi.log").start()
    try:
        assert port_open(server.port)
        started = time.monotonic()
        with connect(f"{server.url}/ws/{facility()}?subscribe-broadcast", origin=SITE_ORIGIN, open_timeout=10) as ws:
            assert time.monotonic() - started < 6 * TIMING  # as with one Redis down: it opens after the subscribe wait
            ws.ping().wait(5)
        wait_for(lambda: "Redis Cluster slots not readable" in server.log_text(), 10, "the log line")
        with override_settings(WS4REDIS_CONNECTION=dead), pytest.raises(redis.ConnectionError):
            RedisPublisher(facility="f", broadcast=True).publish_message("nowhere")
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


@pytest.mark.timeout(60)
def test_stored_messages_fetch_message_and_history_off_work_across_shards(cluster_stack, login):
    from django.contrib.auth.models import User
    from django.test import RequestFactory

    cluster, server = cluster_stack
    fac = facility()
    request = RequestFactory().get("/")
    request.user = User.objects.get(username="mary")  # in "cooks" and "staff": two group channels
    request.session = None
    RedisPublisher(facility=fac, groups=["cooks"]).publish_message("for the cooks", expire=30)
    RedisPublisher(facility=fac, users=["mary"]).publish_message("for mary", expire=30)
    assert RedisPublisher().fetch_message(request, fac, "user") == b"for mary"
    assert RedisPublisher().fetch_message(request, fac, "group") == b"for the cooks"
    query = "subscribe-user&subscribe-group&subscribe-broadcast"
    with client(server, f"/ws/{fac}?{query}", login("mary")) as ws:
        assert sorted(recv(ws) for _ in range(2)) == ["for mary", "for the cooks"]  # stored, from two shards
        with override_settings(WS4REDIS_HISTORY_LENGTH=0, WS4REDIS_HISTORY_SECONDS=0):  # SPUBLISH in the store script, per slot
            assert RedisPublisher(facility=fac, broadcast=True, users=["mary"]).publish_message("raw", expire=0) == 2
        assert [recv(ws) for _ in range(2)] == ["raw", "raw"]  # no ids without history: as ws4redis did
    for port in cluster.masters():
        assert cluster.client(port).execute_command("PUBSUB", "CHANNELS") == []


@pytest.mark.timeout(60)
def test_a_publish_to_many_users_is_one_request_per_shard_not_one_per_channel(cluster_stack, monkeypatch):
    cluster, _ = cluster_stack
    publisher = RedisPublisher(facility=facility(), users=[f"u{i}" for i in range(200)])
    publisher.publish_message("warm-up", expire=0)  # the client learns the slots and the script once
    writes: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        writes.append(self.port)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    assert publisher.publish_message("to 200 users", expire=0) == 0  # nobody listens
    monkeypatch.undo()
    assert sorted(writes) == sorted(cluster.masters())  # one pipelined write to each master
    for port in cluster.masters():
        stats = cluster.client(port).info("commandstats")
        assert "cmdstat_command|getkeys" not in stats  # routed by this process, never asked of a node


@pytest.mark.timeout(60)
def test_replica_acknowledgement_on_a_cluster_waits_on_every_shard_it_wrote(cluster_stack, login):
    from ws4redis_uwsgi.publisher import NotReplicatedError

    cluster, server = cluster_stack
    fac = facility()
    names = [channel(Audience.BROADCAST, fac), channel(Audience.USER, fac, "john"), channel(Audience.GROUP, fac, "cooks")]
    with client(server, f"/ws/{fac}?subscribe-broadcast&subscribe-user&subscribe-group", login("john")) as ws:
        with override_settings(WS4REDIS_WAIT_REPLICAS=1):  # every master has one replica
            publisher = RedisPublisher(facility=fac, broadcast=True, users=["john"], groups=["cooks"])
            publisher.publish_message("held twice", expire=0)
        assert recv(ws) == "held twice"
        for name in names:  # on each shard's replica already
            replica = next(
                n.port for n in cluster.nodes() if not n.is_master and n.master_id == cluster.node_id(owner(cluster, name))
            )
            stream = f"test:history:{name[len('test:') :]}"
            assert cluster.client(replica).execute_command("READONLY") and cluster.client(replica).xlen(stream) == 1
        with override_settings(WS4REDIS_WAIT_REPLICAS=2, WS4REDIS_WAIT_TIMEOUT=0.2), pytest.raises(NotReplicatedError):
            RedisPublisher(facility=fac, broadcast=True).publish_message("hoping", expire=0)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("users", "history"),
    [
        pytest.param(0, {}, id="one-channel"),
        pytest.param(30, {}, id="30-users-history-on"),
        pytest.param(30, HISTORY_OFF, id="30-users-history-off"),
    ],
)
def test_a_publish_to_a_frozen_master_raises_within_its_timeout_not_once_per_retry(site_db, users, history):
    """Not once per retry, nor once per channel: a publish to many users' channels has several on the frozen master."""
    # SIGSTOP: what a master cut off by a partition looks like (connections open, nothing answers).
    with PatientClusterSet() as cluster, override_settings(WS4REDIS_CONNECTION=cluster.url, **history):
        fac = facility()
        frozen = owner(cluster, channel(Audience.BROADCAST, fac))
        names = [f"u{i}" for i in range(users)]
        assert users == 0 or sum(owner(cluster, channel(Audience.USER, fac, n)) == frozen for n in names) > 3
        publisher = RedisPublisher(facility=fac, broadcast=True, users=names)
        publisher.publish_message("warm", expire=0)
        cluster.procs[frozen].send_signal(signal.SIGSTOP)
        try:
            bound = max(DEFAULT_TIMEOUTS.values()) + 1.0 * TIMING
            for _ in range(2):  # on its pooled connection, then on a new one
                started = time.monotonic()
                with pytest.raises(redis.RedisError):
                    publisher.publish_message("into the void", expire=0)
                assert time.monotonic() - started < bound
        finally:
            cluster.procs[frozen].send_signal(signal.SIGCONT)
        assert publisher.publish_message("thawed", expire=0) == 0


@pytest.mark.timeout(180)
def test_the_operators_commands_publish_show_history_and_list_workers_on_a_cluster(cluster_stack):
    cluster, server = cluster_stack
    env = {"WS4REDIS_TEST_REDIS": cluster.url}  # what the commands' process reads as WS4REDIS_CONNECTION
    fac = facility()
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws:
        done = ws4redis("publish", "--facility", fac, "--broadcast", "from the command", "--expire", "0", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith("to 1 receiving worker(s)")
        assert recv(ws) == "from the command"
        RedisPublisher(facility=fac, broadcast=True).publish_message("from the site", expire=0)
        assert recv(ws) == "from the site"
        done = ws4redis("history", "--facility", fac, "--broadcast", env=env)
        assert done.returncode == 0, done.stderr
        assert [line.split("\t", 1)[1] for line in done.stdout.splitlines()] == ["from the command", "from the site"]
        done = ws4redis("workers", env=env)
    assert done.returncode == 0, done.stderr
    pids = {line.split("\t")[1] for line in done.stdout.splitlines()[1:]}
    assert {f"pid {pid}" for pid in server.worker_pids()} <= pids
