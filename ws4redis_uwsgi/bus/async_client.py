"""redis.asyncio clients built from ``WS4REDIS_CONNECTION``, one per event loop, for the async publisher.

The same setting in all its forms (:func:`~.connection.parse`): one Redis
(URL or dict), a Sentinel set (``redis.asyncio.sentinel``) or a Cluster
(``redis.asyncio.cluster.RedisCluster``), with the same default timeouts
and Sentinel retries as the sync clients of :mod:`.connection`.

A redis.asyncio connection belongs to the event loop that opened it, so a
client is never shared between loops: :func:`get_async_client` keeps one per
running loop and setting value. uvicorn runs one loop for the life of the
process; Django under WSGI (``runserver``, uWSGI) runs each async view in a
loop of its own (asgiref's ``async_to_sync``), which then pays a connect per
request. Each client is closed, inside its loop, when that loop shuts down
(``asyncio.run``, asgiref and uvicorn all finalize the loop's async
generators then: :func:`_closed_with_loop`), or at once by :func:`aclose_clients`.
A loop closed without that leaves its clients to the garbage collector;
they are dropped from the cache at the next call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError

from .. import process, settings
from .connection import CONNECTION_RETRIES, DEFAULT_TIMEOUTS, SENTINEL_TIMEOUTS, RedisTarget, Topology, parse, setting_key, target

_REDIS_ARGUMENTS = frozenset(inspect.signature(redis.asyncio.Redis.__init__).parameters) - {"self"}
_CLUSTER_ARGUMENTS = frozenset(inspect.signature(AsyncRedisCluster.__init__).parameters) - {"self"}

# Per process (a forked child starts afresh), per loop, per setting value: (client, the async
# generator that closes it with its loop). Not weakly keyed: a client in use refers to its loop.
_Clients = dict[asyncio.AbstractEventLoop, dict[str, tuple[Any, AsyncGenerator[None, None]]]]


def make_async_client(value: Any = None) -> Any:
    """A new redis.asyncio client for ``value`` (default: the current setting); it opens no connection yet.

    :raises ValueError: the setting names an option that redis.asyncio does not take.
    """
    parsed = target() if value is None else parse(value)
    if parsed.topology is Topology.SENTINEL:
        return _sentinel_client(parsed)
    if parsed.topology is Topology.CLUSTER:
        return _cluster_client(parsed)
    if parsed.url is not None:
        timeouts: dict[str, Any] = dict(DEFAULT_TIMEOUTS)
        return redis.asyncio.Redis.from_url(parsed.url, **timeouts)
    return redis.asyncio.Redis(**_supported({**DEFAULT_TIMEOUTS, **parsed.options}, _REDIS_ARGUMENTS))


def _supported(options: dict[str, Any], accepted: frozenset[str]) -> dict[str, Any]:
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"WS4REDIS_CONNECTION: {', '.join(map(repr, unknown))} not supported by redis.asyncio (the async publisher)"
        )
    return options


def _sentinel_client(parsed: RedisTarget) -> redis.asyncio.Redis:
    # As the sync client (connection._sentinel_client): the sentinels asked in turn, a master
    # that is away retried briefly, so that a publish raises within about its timeouts.
    sentinel = AsyncSentinel(
        list(parsed.nodes),
        sentinel_kwargs={**SENTINEL_TIMEOUTS, "retry": AsyncRetry(NoBackoff(), 0), **parsed.sentinel_options},
        **_supported(
            {
                **DEFAULT_TIMEOUTS,
                "retry": AsyncRetry(NoBackoff(), CONNECTION_RETRIES, supported_errors=(redis.ConnectionError,)),
                **parsed.options,
            },
            _REDIS_ARGUMENTS,
        ),
    )
    assert parsed.master_name is not None
    return sentinel.master_for(parsed.master_name)


def _cluster_client(parsed: RedisTarget) -> AsyncRedisCluster:
    # RedisCluster of redis.asyncio reads the slots at its first command, not when made:
    # no LazyCluster is needed (async_publish maps its failure to a ConnectionError).
    kwargs = _supported({**DEFAULT_TIMEOUTS, **parsed.options}, _CLUSTER_ARGUMENTS)
    kwargs.pop("retry", None)  # RedisCluster retries itself; its nodes must not
    (host, port), *others = parsed.nodes
    return _BoundedAsyncCluster(host=host, port=port, startup_nodes=[AsyncClusterNode(h, p) for h, p in others], **kwargs)


class _BoundedAsyncCluster(AsyncRedisCluster):
    """As the sync client's: a command is tried again after a connection error, never after a timeout."""

    ERRORS_ALLOW_RETRY = (redis.ConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


def _clients() -> _Clients:
    return process.resource("async publisher clients", _Clients)


async def get_async_client() -> Any:
    """The running loop's client for the current setting, made on first use in that loop.

    Keyed by the setting's value, as :func:`~.connection.get_client`, so that
    ``override_settings`` gets a client for the overridden server.
    """
    loop = asyncio.get_running_loop()
    value = settings.get("WS4REDIS_CONNECTION")
    key = setting_key(value)
    clients = _clients()
    for gone in [other for other in list(clients) if other.is_closed()]:  # list(): other threads run other loops
        clients.pop(gone, None)
    per_loop = clients.setdefault(loop, {})
    try:
        return per_loop[key][0]
    except KeyError:
        pass
    client = make_async_client(value)
    closer = _closed_with_loop(key, client)
    per_loop[key] = (client, closer)
    await closer.__anext__()  # the loop now knows it (its asyncgen hooks) and finalizes it at shutdown
    return client


async def _closed_with_loop(key: str, client: Any) -> AsyncGenerator[None, None]:
    """Suspended while ``client`` is in use; finalized (so the client closed) when its loop shuts down.

    ``loop.shutdown_asyncgens()``, which ``asyncio.run`` and the servers call
    before closing a loop, closes every async generator started in it that
    is not finished, inside the loop: the one place to close connections
    that belong to it.
    """
    try:
        yield
    finally:
        per_loop = _clients().get(asyncio.get_running_loop(), {})
        if key in per_loop and per_loop[key][0] is client:
            del per_loop[key]
        try:
            await client.aclose()
        except Exception:  # a connection that broke meanwhile: closed all the same, nothing to report
            pass


async def aclose_clients() -> None:
    """Close the running loop's clients now (a later publish in this loop makes new ones)."""
    per_loop = _clients().pop(asyncio.get_running_loop(), {})
    for _client, closer in per_loop.values():
        await closer.aclose()
