"""The Sentinel and Cluster topologies of tests/topologies.py, checked with plain redis-py.

Before any project code is tested against a failover or a resharding, these
tests show the topologies really do fail over and reshard, and what a plain
client sees when they do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from tests.servers import TIMING
from tests.topologies import HOST, ClusterSet, SentinelSet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelSet]:
    with SentinelSet() as topology:
        yield topology


@pytest.fixture(scope="module")
def cluster_set() -> Iterator[ClusterSet]:
    with ClusterSet() as topology:
        yield topology


@pytest.fixture
def cluster_client(cluster_set: ClusterSet) -> Iterator[RedisCluster]:
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_set.startup_nodes],
        socket_timeout=2 * TIMING,
        decode_responses=True,
    )
    yield client
    client.close()


def key_on(cluster_set: ClusterSet, master: int, prefix: str) -> str:
    """A key whose slot the master on ``master`` serves."""
    for n in range(10_000):
        key = f"{prefix}-{n}"
        if cluster_set.master_for_slot(key_slot(key.encode())) == master:
            return key
    raise AssertionError(f"no key for {master}")


def pairs(reply: Any) -> dict[str, Any]:
    """A RESP2 flat key/value list (what CLUSTER SHARDS nests) as a dict; a dict stays one."""
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


# Sentinel ---------------------------------------------------------------------------------------


def test_sentinel_configuration_forms(sentinel_set: SentinelSet) -> None:
    p1, p2, p3 = sentinel_set.sentinel_ports
    assert sentinel_set.url == f"redis+sentinel://{HOST}:{p1},{HOST}:{p2},{HOST}:{p3}/mymaster"
    assert sentinel_set.as_dict() == {"sentinels": [(HOST, p1), (HOST, p2), (HOST, p3)], "master_name": "mymaster", "db": 0}


def test_sentinel_failover_moves_writes_to_the_new_master(sentinel_set: SentinelSet) -> None:
    sentinel = Sentinel(sentinel_set.as_dict()["sentinels"], socket_timeout=1)
    master = sentinel.master_for("mymaster", socket_timeout=1)
    assert master.set("before", "1")
    assert master.get("before") == b"1"
    assert master.wait(1, 1000) == 1  # on the replica too, so it survives the failover

    old = sentinel_set.kill_master()
    new = sentinel_set.wait_failover(old)
    assert new != old
    assert sentinel_set.master_port() == new

    promoted = Sentinel(sentinel_set.as_dict()["sentinels"], socket_timeout=1).master_for("mymaster", socket_timeout=1)
    assert promoted.connection_pool.get_master_address() == (HOST, new)
    assert promoted.set("after", "2")
    assert promoted.get("before") == b"1"
    assert promoted.execute_command("ROLE")[0] == b"master"

    sentinel_set.restart(old)
    role = sentinel_set.client(old).execute_command("ROLE")
    assert role[0] == "slave" and int(role[2]) == new


def test_a_start_failing_half_way_leaves_no_process() -> None:
    started: list[Any] = []

    class Broken(SentinelSet):
        def _sentinels_ready(self) -> bool:
            started.extend(self.procs.values())
            raise RuntimeError("broken on purpose")

    topology = Broken()
    with pytest.raises(RuntimeError, match="broken on purpose"):
        topology.start()
    assert len(started) == 5  # master, replica, three sentinels
    assert all(proc.poll() is not None for proc in started)
    assert topology.dir is None and not topology.procs


# Cluster ----------------------------------------------------------------------------------------


def test_cluster_configuration_forms(cluster_set: ClusterSet) -> None:
    nodes = cluster_set.startup_nodes
    assert len(nodes) == 3
    assert cluster_set.url == "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in nodes)
    assert cluster_set.as_dict() == {"cluster": True, "startup_nodes": nodes}
    assert cluster_set.keyslot("foo") == key_slot(b"foo") == 12182


def test_cluster_has_three_shards_and_writes_reach_each(cluster_set: ClusterSet, cluster_client: RedisCluster) -> None:
    shards = [pairs(shard) for shard in cluster_set.client(cluster_set.ports[0]).execute_command("CLUSTER", "SHARDS")]
    roles = sorted(sorted(pairs(node)["role"] for node in shard["nodes"]) for shard in shards)
    assert roles == [["master", "replica"]] * 3

    masters = cluster_set.masters()
    assert len(masters) == 3
    for master in masters:
        key = key_on(cluster_set, master, "shard")
        assert cluster_client.set(key, master)
        assert cluster_set.client(master).get(key) == str(master)  # on that very node, not elsewhere
        assert cluster_client.get(key) == str(master)


def test_migrate_slot_keeps_its_keys_readable(cluster_set: ClusterSet, cluster_client: RedisCluster) -> None:
    key = "migrating-key"
    slot = cluster_set.keyslot(key)
    source = cluster_set.master_for_slot(slot)
    target = next(port for port in cluster_set.masters() if port != source)
    cluster_client.set(key, "kept")

    cluster_set.migrate_slot(slot, target)

    assert cluster_set.master_for_slot(slot) == target
    assert cluster_set.client(target).get(key) == "kept"
    assert cluster_client.get(key) == "kept"  # the client follows the MOVED redirection


def test_migrate_slot_ends_shard_subscriptions_with_a_sunsubscribe(cluster_set: ClusterSet) -> None:
    """Redis 7 drops shard subscriptions of a slot a node gives away, and says so (redis-py: type 'sunsubscribe')."""
    channel = "migrating-channel"
    slot = cluster_set.keyslot(channel)
    source = cluster_set.master_for_slot(slot)
    target = next(port for port in cluster_set.masters() if port != source)
    node = redis.Redis(host=HOST, port=source, socket_timeout=2 * TIMING)
    pubsub = node.pubsub()
    try:
        pubsub.ssubscribe(channel)
        assert pubsub.get_message(timeout=2 * TIMING)["type"] == "ssubscribe"

        cluster_set.migrate_slot(slot, target)

        message = pubsub.get_message(timeout=2 * TIMING)
        assert message == {"type": "sunsubscribe", "pattern": None, "channel": channel.encode(), "data": 0}
        # The old owner no longer takes the channel: SPUBLISH there is redirected.
        with pytest.raises(redis.exceptions.MovedError):
            node.spublish(channel, "lost")
    finally:
        pubsub.close()
        node.close()


def test_killed_master_is_replaced_and_its_replicated_keys_stay(cluster_set: ClusterSet) -> None:
    """Last in the module: it leaves one shard without a replica."""
    victim = cluster_set.masters()[0]
    key = key_on(cluster_set, victim, "failover")
    node = cluster_set.client(victim)
    node.set(key, "replicated")
    assert node.wait(1, 1000) == 1

    cluster_set.kill_master(victim)
    heir = cluster_set.wait_failover(victim)

    assert heir != victim
    assert victim not in cluster_set.masters() and heir in cluster_set.masters()
    assert cluster_set.master_for_slot(key_slot(key.encode())) == heir
    info = cluster_set.client(heir).execute_command("CLUSTER", "INFO")
    assert "cluster_state:ok" in info
    client = RedisCluster(startup_nodes=[ClusterNode(HOST, heir)], socket_timeout=2 * TIMING, decode_responses=True)
    try:
        assert client.get(key) == "replicated"
    finally:
        client.close()
