"""What :meth:`RedisStore.publish_message` sends, sent on a redis.asyncio client.

The publish scripts, their arguments and the reading of their replies are
those of the sync publisher (:class:`~.store.WithHistory`,
:class:`~.store.WithoutHistory`, :class:`.scripts.ScriptCalls`): only the
round trips are awaited here, on the loop's own connections, with no
thread. So a message published here
gets its ids from the same script and is resumed like any other.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from . import scripts
from .connection import is_cluster
from .store import WithHistory, WithoutHistory


async def publish(client: Any, outgoing: WithHistory | WithoutHistory) -> tuple[str | None, int]:
    """Send ``outgoing``: (the id of the first copy, None without history; the receivers Redis reported).

    :raises scripts.NotReplicatedError: fewer replicas than ``WS4REDIS_WAIT_REPLICAS`` took it in time.
    :raises redis.RedisError: when Redis (a shard) cannot be reached within the timeouts.
    """
    if is_cluster(client):
        try:
            await client.initialize()  # reads the slots once; a no-op afterwards
        except RedisClusterException as exc:  # as LazyCluster does for the sync client
            raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc
    calls = outgoing.calls(client)
    replies = await (_run_acknowledged(client, calls) if calls.replicas else _run_scripts(client, calls))
    return outgoing.result(calls, replies)


async def _run_scripts(client: Any, calls: scripts.ScriptCalls) -> list[Any]:
    """As ``scripts._run_scripts``: EVALSHA per list of keys, pipelined; a Redis that does not know the script learns it."""
    if len(calls.keys) == 1:
        try:
            return [await client.execute_command(*calls.command(calls.keys[0]))]
        except redis.exceptions.NoScriptError:  # a new or restarted Redis
            keys = calls.keys[0]
            return [await client.eval(calls.script.text, len(keys), *keys, *calls.args)]
    replies = await _pipelined(client, calls, calls.keys)
    again = [i for i, r in enumerate(replies) if scripts.is_no_script(r)]
    if again:
        await client.script_load(calls.script.text)  # on every primary of a Cluster
        for i, reply in zip(again, await _pipelined(client, calls, [calls.keys[i] for i in again]), strict=True):
            replies[i] = reply
    return scripts.raise_first(replies)


async def _pipelined(client: Any, calls: scripts.ScriptCalls, keys_list: list[list[str]], wait: Any = None) -> list[Any]:
    """The script calls of ``keys_list`` in one pipeline, then ``WAIT`` when ``wait`` is given.

    ``wait`` is the Cluster node whose connection the WAIT must follow (a
    Cluster pipeline sends each node's commands on one connection, in
    order), or True for one Redis.
    """
    cluster = is_cluster(client)
    if cluster and wait is None:
        try:
            return await _to_each_shard(client, calls, keys_list)
        except redis.ConnectionError:  # (a timeout is no ConnectionError: it is raised)
            pass  # a master gone (a failover?): redis-py's pipeline learns the slots again and follows
    pipe = client.pipeline(transaction=False)
    for keys in keys_list:
        target = {"target_nodes": client.get_node_from_key(keys[0])} if cluster else {}
        pipe.execute_command(*calls.command(keys), **target)
    if wait is not None:
        pipe.execute_command("WAIT", calls.replicas, calls.timeout_ms, **({"target_nodes": wait} if cluster else {}))
    return list(await pipe.execute(raise_on_error=False))


async def _to_each_shard(client: Any, calls: scripts.ScriptCalls, keys_list: list[list[str]]) -> list[Any]:
    """As ``scripts._to_each_shard``: every shard at once, a shard that does not answer costs one timeout, not one per call.

    redis-py's asyncio Cluster pipeline, in a client new to its loop (each
    ``async_to_sync`` call of a WSGI site), kept trying a frozen master until
    the Cluster failed it over (a minute in the test).

    :raises redis.TimeoutError: a shard did not answer in time.
    :raises redis.ConnectionError: a shard could not be reached (the caller tries redis-py's way).
    """
    replies: list[Any] = [None] * len(keys_list)

    async def on(node: Any, indexes: list[int]) -> None:
        connection = node.acquire_connection()
        done = False
        try:
            await connection.send_packed_command(connection.pack_commands([calls.command(keys_list[i]) for i in indexes]))
            for i in indexes:
                try:
                    replies[i] = await node.parse_response(connection, "EVALSHA")
                except redis.ResponseError as exc:
                    replies[i] = exc
            done = True
        finally:
            if not done:
                await connection.disconnect(nowait=True)  # replies may still come on it: closed, not waited for
            node.release(connection)

    shards = scripts.by_node(client, keys_list)
    failures = await asyncio.gather(*(on(node, indexes) for node, indexes in shards), return_exceptions=True)
    for failure in failures:
        if isinstance(failure, BaseException):
            raise failure
    for i, reply in enumerate(replies):
        if scripts.redirected(reply):
            try:
                replies[i] = await client.execute_command(*calls.command(keys_list[i]))
            except redis.ResponseError as exc:
                replies[i] = exc
    return replies


async def _run_acknowledged(client: Any, calls: scripts.ScriptCalls) -> list[Any]:
    """As ``scripts._run_acknowledged``: each shard's scripts, then ``WAIT`` on the same connection."""
    shards = scripts.by_node(client, calls.keys) if is_cluster(client) else [(True, list(range(len(calls.keys))))]
    replies: list[Any] = [None] * len(calls.keys)
    for node, indexes in shards:
        shard_keys = [calls.keys[i] for i in indexes]
        *done, acknowledged = await _pipelined(client, calls, shard_keys, wait=node)
        if any(scripts.is_no_script(r) for r in done):
            await client.script_load(calls.script.text)
            *done, acknowledged = await _pipelined(client, calls, shard_keys, wait=node)
        for i, reply in zip(indexes, scripts.raise_first(done), strict=True):
            replies[i] = reply
        scripts.check_acknowledged(calls, acknowledged)
    return replies
