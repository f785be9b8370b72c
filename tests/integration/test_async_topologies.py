"""The async publisher through Redis Sentinel (both setting forms) and on a Redis Cluster, real servers on free ports.

With a worker of tests/topologies.py's sets: the websockets get what
``apublish_message`` published, ids and resume work across shards with sync
and async publishes mixed, and ``WAIT`` is asked of every shard written.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from django.test import override_settings

from tests.integration.failover import number, worker_on
from tests.integration.helpers import client, facility, recv, split
from tests.servers import TIMING, UwsgiServer
from tests.topologies import ClusterSet, PatientClusterSet, SentinelSet
from ws4redis_uwsgi.bus.connection import DEFAULT_TIMEOUTS
from ws4redis_uwsgi.core.channels import Audience, channel_name
from ws4redis_uwsgi.publisher import NotReplicatedError, RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]


def apublish(message: str, **kwargs) -> int:
    return asyncio.run(RedisPublisher(**kwargs).apublish_message(message, expire=0))


@pytest.fixture(scope="module")
def sentinel_stack(site_db, tmp_path_factory) -> Iterator[tuple[SentinelSet, UwsgiServer]]:
    with SentinelSet() as sentinels, worker_on(sentinels.url, tmp_path_factory.mktemp("sentinel")) as server:
        yield sentinels, server


@pytest.fixture(scope="module")
def cluster_stack(site_db, tmp_path_factory) -> Iterator[tuple[ClusterSet, UwsgiServer]]:
    with ClusterSet() as cluster, worker_on(cluster.url, tmp_path_factory.mktemp("cluster")) as server:
        yield cluster, server


@pytest.mark.parametrize("form", ["url", "dict"])
def test_through_the_sentinels_master_with_either_form(sentinel_stack, form):
    sentinels, server = sentinel_stack
    fac = facility()
    setting = sentinels.url if form == "url" else sentinels.as_dict()
    with client(server, f"/ws/{fac}?subscribe-broadcast") as ws, override_settings(WS4REDIS_CONNECTION=setting):
        assert apublish("async through the sentinels", facility=fac, broadcast=True) == 1
        assert recv(ws) == "async through the sentinels"
        with override_settings(WS4REDIS_WAIT_REPLICAS=1):  # the set has one replica
            apublish("held twice", facility=fac, broadcast=True)
        assert recv(ws) == "held twice"
        with override_settings(WS4REDIS_WAIT_REPLICAS=2, WS4REDIS_WAIT_TIMEOUT=0.2):
            with pytest.raises(NotReplicatedError, match="1 of 2 replicas"):
                apublish("hoping", facility=fac, broadcast=True)
        assert recv(ws) == "hoping"
    assert redis.Redis(port=sentinels.master_port()).xlen(f"test:history:broadcast:{fac}") == 3


def channel(audience: Audience, fac: str, name: str | None = None) -> str:
    return channel_name("test", audience, fac, name, sharded=True)


def test_on_a_cluster_sync_and_async_publishes_resume_across_shards(cluster_stack, login):
    cluster, server = cluster_stack
    query = "subscribe-broadcast&subscribe-user&subscribe-group&resume="
    john = login("john")
    audiences = [{"broadcast": True}, {"users": ["john"]}, {"groups": ["cooks"]}]

    def names(fac: str) -> list[str]:
        return [channel(Audience.BROADCAST, fac), channel(Audience.USER, fac, "john"), channel(Audience.GROUP, fac, "cooks")]

    fac = facility()
    while len({cluster.master_for_slot(cluster.keyslot(n)) for n in names(fac)}) < 2:  # channels on several shards
        fac = facility()

    def publish(i: int) -> str:
        # One channel at a time, every fifth message on all three; even ones async, odd ones sync.
        chosen = audiences[i % 3] if i % 5 else {k: v for a in audiences for k, v in a.items()}
        if i % 2:
            RedisPublisher(facility=fac, **chosen).publish_message(f"m{i}", expire=0)
        else:
            apublish(f"m{i}", facility=fac, **chosen)
        return f"m{i}"

    with client(server, f"/ws/{fac}?{query}", john) as ws:
        seen = [publish(i) for i in range(20)]
        frames = [split(recv(ws)) for _ in range(20)]
    assert sorted(p for _, p in frames) == sorted(seen)  # each once, though every fifth is on three channels
    missed = [publish(i) for i in range(20, 80)]
    with client(server, f"/ws/{fac}?{query.replace('resume=', f'resume={frames[-1][0]}')}", john) as ws:
        got = [split(recv(ws))[1] for _ in range(60)]
        assert sorted(got, key=number) == missed and len(set(got)) == 60
        for index, name in enumerate(names(fac)):
            on_channel = [m for m in missed if number(m) % 5 == 0 or number(m) % 3 == index]
            assert [m for m in got if m in on_channel] == on_channel, name  # in order within a channel


def test_on_a_cluster_wait_is_asked_of_every_shard_written(cluster_stack, login):
    cluster, server = cluster_stack
    fac = facility()
    targets = {"broadcast": True, "users": ["john"], "groups": ["cooks"]}
    with client(server, f"/ws/{fac}?subscribe-broadcast&subscribe-user&subscribe-group", login("john")) as ws:
        with override_settings(WS4REDIS_WAIT_REPLICAS=1):  # every master has one replica
            assert apublish("held twice", facility=fac, **targets) == 3
        assert recv(ws) == "held twice"
        for name in [
            channel(Audience.BROADCAST, fac),
            channel(Audience.USER, fac, "john"),
            channel(Audience.GROUP, fac, "cooks"),
        ]:
            master = cluster.master_for_slot(cluster.keyslot(name))
            replica = next(n.port for n in cluster.nodes() if not n.is_master and n.master_id == cluster.node_id(master))
            stream = f"test:history:{name[len('test:') :]}"
            assert cluster.client(replica).execute_command("READONLY") and cluster.client(replica).xlen(stream) == 1
        with override_settings(WS4REDIS_WAIT_REPLICAS=2, WS4REDIS_WAIT_TIMEOUT=0.2), pytest.raises(NotReplicatedError):
            apublish("hoping", facility=fac, broadcast=True)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("users", [0, 30], ids=["one-channel", "30-users"])
def test_on_a_cluster_a_publish_to_a_frozen_master_raises_within_its_timeout(site_db, users):
    """As the sync publisher: not once per retry, nor once per channel on the frozen master.

    In one loop, as in an ASGI server, and in a loop of its own, as each
    ``async_to_sync`` call of a WSGI site: there a new client first reads the
    slots from the setting's nodes in turn (a frozen one costs its timeout),
    then the publish costs one more at most. Before, a fresh client's
    pipeline kept trying until the Cluster failed the master over, a minute
    later.
    """
    with PatientClusterSet() as cluster, override_settings(WS4REDIS_CONNECTION=cluster.url):
        fac = facility()
        frozen = cluster.master_for_slot(cluster.keyslot(channel(Audience.BROADCAST, fac)))
        names = [f"u{i}" for i in range(users)]
        on_it = [n for n in names if cluster.master_for_slot(cluster.keyslot(channel(Audience.USER, fac, n))) == frozen]
        assert users == 0 or len(on_it) > 3
        publisher = RedisPublisher(facility=fac, broadcast=True, users=names)
        timeout = max(DEFAULT_TIMEOUTS.values())

        async def publish(warm: bool) -> float:
            if warm:
                await publisher.apublish_message("warm", expire=0)
                cluster.procs[frozen].send_signal(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(redis.RedisError):
                await publisher.apublish_message("into the void", expire=0)
            return time.monotonic() - started

        try:
            assert asyncio.run(publish(warm=True)) < timeout + 1.0 * TIMING  # (the loop's client made before)
            assert asyncio.run(publish(warm=False)) < 2 * timeout + 1.0 * TIMING
        finally:
            cluster.procs[frozen].send_signal(signal.SIGCONT)
        assert apublish("thawed", facility=fac, broadcast=True, users=names) == 0


def test_on_a_cluster_a_publish_to_many_users_follows_a_slot_that_moved_since_the_client_learnt_the_slots(cluster_stack):
    cluster, _ = cluster_stack
    fac = facility()
    names = [f"m{i}" for i in range(12)]
    slot = cluster.keyslot(channel(Audience.USER, fac, names[0]))
    publisher = RedisPublisher(facility=fac, users=names)

    async def publish_around_a_migration() -> None:
        await publisher.apublish_message("before", expire=60)  # the loop's client learns the slots
        destination = next(p for p in cluster.masters() if p != cluster.master_for_slot(slot))
        await asyncio.to_thread(cluster.migrate_slot, slot, destination)
        await publisher.apublish_message("after", expire=60)  # that shard answers MOVED for one of them

    asyncio.run(publish_around_a_migration())
    for name in names:
        key = channel(Audience.USER, fac, name)
        stored = cluster.client(cluster.master_for_slot(cluster.keyslot(key)), decode=False).get(key)
        assert stored is not None and b"after" in stored, name


def test_an_unreachable_cluster_raises_a_connection_error(site_db):
    with override_settings(WS4REDIS_CONNECTION="redis+cluster://127.0.0.1:1"), pytest.raises(redis.ConnectionError):
        apublish("nowhere", facility=facility(), broadcast=True)
