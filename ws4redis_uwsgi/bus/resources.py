"""This process's Redis resources: the hub, the command client, the batched reader, the backlog budget, origins.

Each is made on first use in the process that uses it (see :mod:`ws4redis_uwsgi.process`).
"""

from __future__ import annotations

import uuid
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import process, settings
from . import budget
from .batched_reader import BatchedPipeline, BatchedReader
from .budget import BacklogBudget
from .connection import client_name, make_client, sharded
from .hub import SubscriptionHub
from .shards import ClusterShards, Shards, SingleShard

#: Commands (GET, PUBLISH, XRANGE) from all websockets of a worker share this many connections.
COMMAND_POOL_SIZE = 8


def get_hub() -> SubscriptionHub:
    """This process's hub, created on first use.

    It reads new channels' stored messages with their subscription (not
    on a Cluster: see :mod:`.subscription`): a publish stores and
    publishes at once, with history or without (a script), so a read that
    Redis runs right after the ``SUBSCRIBE`` finds the message before and
    the websocket gets the next one live, or finds that one.
    """
    return process.resource(
        "hub",
        lambda: SubscriptionHub(_shards(), linger=settings.get("WS4REDIS_CHANNEL_LINGER"), read_stored=not sharded()),
    )


def _shards() -> Shards:
    if sharded():
        return ClusterShards()
    # The hub reconnects itself, with backoff: its client must not retry.
    return SingleShard(lambda: make_client(retry=Retry(NoBackoff(), 0), client_name=client_name()))


def command_client() -> Any:
    """This process's client for GET and PUBLISH, with a bounded pool."""
    return process.resource("command client", lambda: make_client(max_connections=COMMAND_POOL_SIZE))


def batched_reader() -> BatchedReader:
    """This process's :class:`BatchedReader` on :func:`command_client`."""
    return process.resource("batched reader", lambda: BatchedReader(command_client(), get_hub()))


def batched_pipeline() -> BatchedPipeline:
    """This process's :class:`BatchedPipeline` on :func:`command_client`: the history reads of websockets."""
    return process.resource("batched pipeline", lambda: BatchedPipeline(command_client()))


def backlog_budget() -> BacklogBudget:
    """This process's :class:`BacklogBudget`."""
    return process.resource("backlog budget", lambda: BacklogBudget(budget.BACKLOG_BUDGET))


class _Origins:
    """Identifiers unique to one websocket among all workers: this process's random token and a counter."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:12]
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"{self.token}.{self.count}"


def new_origin() -> str:
    """An identifier unique to one websocket connection among all workers."""
    return process.resource("origins", _Origins).next()
