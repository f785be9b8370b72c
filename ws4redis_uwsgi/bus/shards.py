"""Where the hub's channels live: one Redis (or a Sentinel's master), or the masters of a Cluster.

The hub keeps one pub/sub connection per shard; these classes tell it which
shard owns a channel and how to reach it, and learn again when that changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import SlotNotCoveredError
from redis.retry import Retry

from .connection import client_name, make_client, node_client


class Shards(Protocol):
    """Where channels live."""

    #: True for a Cluster: shard channels (SSUBSCRIBE) instead of classic ones.
    sharded: bool

    def target(self, channel: str) -> str | None:
        """The shard that owns ``channel`` now, or None while that is not known (no slot map yet)."""

    def client(self, target: str) -> redis.Redis:
        """A new client for a pub/sub connection to ``target``."""

    def refresh(self) -> None:
        """Learn again where channels live; raises what Redis raises when it cannot."""


class SingleShard:
    """A standalone Redis, or the master a Sentinel names (asked again at every connection)."""

    sharded = False

    def __init__(self, client_factory: Callable[[], redis.Redis]) -> None:
        self._client_factory = client_factory

    def target(self, channel: str) -> str:
        return "redis"

    def client(self, target: str) -> redis.Redis:
        return self._client_factory()

    def refresh(self) -> None:
        pass


class ClusterShards:
    """The masters of a Redis Cluster, by the slot of each channel (its hash tag)."""

    sharded = True

    def __init__(self, cluster_factory: Callable[[], Any] = make_client) -> None:
        self._cluster_factory = cluster_factory
        self._cluster: Any = None
        self._targets: dict[str, str] = {}  # channel -> "host:port", until the next refresh

    def target(self, channel: str) -> str | None:
        target = self._targets.get(channel)
        if target is None:
            if self._cluster is None:
                return None
            try:
                node = self._cluster.nodes_manager.get_node_from_slot(key_slot(channel.encode("utf-8")))
            except (SlotNotCoveredError, redis.RedisError):
                return None  # no slot map (yet): the channel waits for the hub's next refresh
            target = self._targets[channel] = f"{node.host}:{node.port}"
        return target

    def client(self, target: str) -> redis.Redis:
        host, _, port = target.rpartition(":")
        return node_client(host, int(port), retry=Retry(NoBackoff(), 0), client_name=client_name())

    def refresh(self) -> None:
        if self._cluster is None:
            self._cluster = self._cluster_factory()
        self._cluster.nodes_manager.initialize()  # reads the slots again
        self._targets.clear()
