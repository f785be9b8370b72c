"""Running a publish script: one call per slot, pipelined, learnt by a Redis that does not know it, then WAIT when asked.

Every publish is a Lua script, with history (:mod:`.history`) and without
(:data:`~.store.STORE_AND_PUBLISH`): what a script stores and publishes, it
does at once, so no other client's command runs in between. Here is how
the sync publisher's scripts reach Redis; :mod:`.async_publish` does the
same on redis.asyncio with the same :class:`ScriptCalls`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .. import settings
from .connection import is_cluster


@dataclass(frozen=True)
class Script:
    """A Lua script's text and the SHA-1 Redis knows it by."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())  # noqa: S324 - Redis names scripts by SHA-1


class NotReplicatedError(redis.exceptions.RedisError):
    """Fewer replicas than ``WS4REDIS_WAIT_REPLICAS`` acknowledged a publish in time.

    The message was published (live clients may have it) but a failover may
    lose it from history: the publisher decides whether to publish again.
    """


@dataclass(frozen=True)
class ScriptCalls:
    """One publish as calls of a script: what the sync and the async publishers both run.

    Built without I/O (:func:`calls`); only how the calls reach Redis differs
    between redis-py's sync and asyncio clients.
    """

    script: Script
    channels: tuple[str, ...]
    #: The KEYS of each call: one call per slot on a Cluster, else one.
    keys: list[list[str]]
    #: The ARGV every call shares.
    args: list[bytes | int | str]
    #: ``WS4REDIS_WAIT_REPLICAS`` (0: no WAIT) and ``WS4REDIS_WAIT_TIMEOUT`` in ms.
    replicas: int
    timeout_ms: int

    def command(self, keys: list[str]) -> tuple[Any, ...]:
        """The EVALSHA command of one call, as ``execute_command`` takes it."""
        return ("EVALSHA", self.script.sha, len(keys), *keys, *self.args)


def calls(script: Script, channels: Sequence[str], keys: list[list[str]], args: list[bytes | int | str]) -> ScriptCalls:
    """``script``'s calls for ``keys`` (one list per call), with the acknowledgement the settings ask for (no I/O)."""
    return ScriptCalls(
        script,
        tuple(channels),
        keys,
        args,
        int(settings.get("WS4REDIS_WAIT_REPLICAS") or 0),
        int(settings.get("WS4REDIS_WAIT_TIMEOUT") * 1000),
    )


def shard_groups(client: Any, channels: Sequence[str]) -> list[list[str]]:
    """``channels`` in groups one script may touch: all of them, or those of one Cluster slot."""
    if not is_cluster(client):
        return [list(channels)]
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(client.keyslot(channel), []).append(channel)
    return list(groups.values())


def by_node(client: Any, keys_list: list[list[str]]) -> list[tuple[Any, list[int]]]:
    """Each Cluster node that owns some of ``keys_list`` (by a list's first key), with the indexes of its lists (no I/O)."""
    nodes: dict[str, tuple[Any, list[int]]] = {}
    for i, keys in enumerate(keys_list):
        node = client.get_node_from_key(keys[0])
        nodes.setdefault(node.name, (node, []))[1].append(i)
    return list(nodes.values())


def redirected(reply: Any) -> bool:
    """Whether a reply says that the call's slot is served elsewhere now (``MOVED``, ``ASK``): the Cluster client follows it."""
    return isinstance(reply, (redis.exceptions.MovedError, redis.exceptions.AskError))


def check_acknowledged(calls: ScriptCalls, acknowledged: Any) -> None:
    """Raise what ``WAIT``'s reply means: its error, or :class:`NotReplicatedError` when too few replicas took it."""
    if isinstance(acknowledged, Exception):
        raise acknowledged
    if int(acknowledged) < calls.replicas:
        raise NotReplicatedError(
            f"{acknowledged} of {calls.replicas} replicas acknowledged the message within {calls.timeout_ms} ms; "
            "it was published but a failover may lose it"
        )


def is_no_script(reply: Any) -> bool:
    """Whether a reply says that Redis does not know the script (a new or restarted Redis): load it and call again."""
    return isinstance(reply, redis.exceptions.NoScriptError)


def raise_first(replies: list[Any]) -> list[Any]:
    """``replies``, unless one is an error: then the first one is raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def run(client: Any, calls: ScriptCalls) -> list[Any]:
    """The replies of ``calls``, one per call, on a sync client.

    On a Cluster the calls of all slots are written to every shard at once
    and read back (:func:`_to_each_shard`): a shard that does not answer
    costs one ``socket_timeout``, and a slot that moved is followed. A shard
    that fails makes this raise: what other shards took stays published.
    With ``WS4REDIS_WAIT_REPLICAS``, each shard's calls are followed by
    ``WAIT`` on the same connection, one shard after the other.

    :raises NotReplicatedError: fewer replicas than asked for took the message in time.
    :raises redis.RedisError: when a shard cannot be reached within the timeouts.
    """
    return _run_acknowledged(client, calls) if calls.replicas else _run_scripts(client, calls)


def _run_scripts(client: Any, calls: ScriptCalls) -> list[Any]:
    """EVALSHA of the script for each list of keys in one pipeline; a Redis that does not know it learns it once."""
    if len(calls.keys) == 1:
        try:
            return [client.execute_command(*calls.command(calls.keys[0]))]
        except redis.exceptions.NoScriptError:  # a new or restarted Redis
            keys = calls.keys[0]
            return [client.eval(calls.script.text, len(keys), *keys, *calls.args)]
    replies = _pipelined(client, calls, calls.keys)
    again = [i for i, r in enumerate(replies) if is_no_script(r)]
    if again:
        client.script_load(calls.script.text)  # on every primary of a Cluster
        for i, reply in zip(again, _pipelined(client, calls, [calls.keys[i] for i in again]), strict=True):
            replies[i] = reply
    return raise_first(replies)


def _pipelined(client: Any, calls: ScriptCalls, keys_list: list[list[str]], wait: bool = False) -> list[Any]:
    cluster = is_cluster(client)
    if cluster and not wait:
        try:
            return _to_each_shard(client, calls, keys_list)
        except redis.ConnectionError:  # (a timeout is no ConnectionError: it is raised)
            pass  # a master gone (a failover?): redis-py's pipeline learns the slots again and follows
    pipe = client.pipeline(transaction=False)
    for keys in keys_list:
        # A ClusterPipeline has no evalsha(); told the node, it does not ask a node for the
        # keys of each call (COMMAND GETKEYS, one round trip per channel in redis-py 8).
        target = {"target_nodes": client.get_node_from_key(keys[0])} if cluster else {}
        pipe.execute_command(*calls.command(keys), **target)
    if wait:
        pipe.execute_command("WAIT", calls.replicas, calls.timeout_ms)
    return list(pipe.execute(raise_on_error=False))


def _to_each_shard(client: Any, calls: ScriptCalls, keys_list: list[list[str]]) -> list[Any]:
    """The calls of ``keys_list`` on a Cluster: written to every shard's connection, then read; a timeout raises at once.

    redis-py's Cluster pipeline sends a call that failed again on its own,
    each waiting out its own timeout: a publish to a thousand users with a
    third of their slots on a frozen master (one cut off by a partition:
    connections open, nothing answers) took minutes. Here a shard that does
    not answer costs one ``socket_timeout`` for the whole publish. A call
    whose slot moved (``MOVED``, ``ASK``: a slot migrating) goes again on
    its own through the Cluster client, which follows it; other error
    replies are the call's result.

    :raises redis.TimeoutError: a shard did not answer in time.
    :raises redis.ConnectionError: a shard could not be reached (the caller tries redis-py's way).
    """
    replies: list[Any] = [None] * len(keys_list)
    taken: list[tuple[Any, Any, list[int]]] = []
    done = False
    try:
        for node, indexes in by_node(client, keys_list):
            shard = client.get_redis_connection(node)
            connection = shard.connection_pool.get_connection()
            taken.append((shard, connection, indexes))
            connection.send_packed_command(connection.pack_commands([calls.command(keys_list[i]) for i in indexes]))
        for shard, connection, indexes in taken:
            for i in indexes:
                try:
                    replies[i] = shard.parse_response(connection, "EVALSHA")
                except redis.ResponseError as exc:
                    replies[i] = exc
        done = True
    finally:
        for shard, connection, _ in taken:
            if not done:
                connection.disconnect()  # replies may still come on it
            shard.connection_pool.release(connection)
    for i, reply in enumerate(replies):
        if redirected(reply):
            try:
                replies[i] = client.execute_command(*calls.command(keys_list[i]))
            except redis.ResponseError as exc:
                replies[i] = exc
    return replies


def _run_acknowledged(client: Any, calls: ScriptCalls) -> list[Any]:
    """The scripts, then ``WAIT replicas timeout`` on the same connection of each shard (one round trip per shard)."""
    # WAIT counts the writes of its own connection: a Cluster's shard gets a pipeline of its own.
    if is_cluster(client):
        shards = [(client.get_redis_connection(node), indexes) for node, indexes in by_node(client, calls.keys)]
    else:
        shards = [(client, list(range(len(calls.keys))))]
    replies: list[Any] = [None] * len(calls.keys)
    for node, indexes in shards:
        shard_keys = [calls.keys[i] for i in indexes]
        *done, acknowledged = _pipelined(node, calls, shard_keys, wait=True)
        if any(is_no_script(r) for r in done):
            node.script_load(calls.script.text)
            *done, acknowledged = _pipelined(node, calls, shard_keys, wait=True)
        for i, reply in zip(indexes, raise_first(done), strict=True):
            replies[i] = reply
        check_acknowledged(calls, acknowledged)
    return replies
