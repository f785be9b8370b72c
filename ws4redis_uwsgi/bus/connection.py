"""Redis clients built from ``WS4REDIS_CONNECTION``: one Redis, a Sentinel set, or a Cluster.

The setting takes one of these forms (SPEC 3a), and the same value serves the
Django publisher, the websocket workers and every command of the package:

* a ``redis://``, ``rediss://`` or ``unix://`` URL, or a dict of
  :class:`redis.Redis` keyword arguments: one Redis, read by redis-py itself;
* ``redis+sentinel://[:password@]host:port[,host:port...]/SERVICE_NAME[/DB]``,
  or ``{"sentinels": [(host, port), ...], "master_name": ..., "db": 0,
  "password": None, "sentinel_kwargs": {}}`` (as channels_redis takes it):
  clients ask the sentinels for the master, and again after a failover;
* ``redis+cluster://[:password@]host:port[,host:port...]``, or
  ``{"cluster": True, "startup_nodes": [(host, port), ...], "password": None}``.

The dict forms take further :class:`redis.Redis` arguments (timeouts, ``ssl``
...). :func:`parse` is the one place that reads the setting; a value it
refuses is a system check error carrying its reason.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .. import process, settings

logger = logging.getLogger("ws4redis_uwsgi")

URL_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"

#: Applied unless the setting says otherwise, so that a Redis that does not
#: answer makes a publisher fail after seconds instead of hanging a request.
DEFAULT_TIMEOUTS = {"socket_connect_timeout": 5.0, "socket_timeout": 5.0}
#: The sentinels' own timeouts unless ``sentinel_kwargs`` says otherwise: a sentinel answers
#: ``SENTINEL MASTERS`` at once, and one that does not must not hold a publish for seconds.
SENTINEL_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
#: How often a Sentinel client asks the sentinels whether the master changed (seconds).
MASTER_CHECK_INTERVAL = 1.0
#: How often a command to a Sentinel's master, or a Cluster command, is tried again after a
#: connection error (refused, reset). Never after a timeout: a server that does not answer
#: (frozen, or cut off by a partition) would make a publish wait its timeout once more per
#: retry. So a publish raises within one ``socket_timeout`` (or ``socket_connect_timeout``);
#: on Sentinel, finding the master takes at most ``(CONNECTION_RETRIES + 1) x sentinels x
#: SENTINEL_TIMEOUTS`` (3 s for three sentinels that do not answer either).
CONNECTION_RETRIES = 1

_REDIS_ARGUMENTS = frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}
# Where a Sentinel or a Cluster says where the servers are, the dict must not.
_PLACED = frozenset({"host", "port", "unix_socket_path"})
_SENTINEL_KEYS = frozenset({"sentinels", "master_name", "sentinel_kwargs"})
_CLUSTER_KEYS = frozenset({"cluster", "startup_nodes"})
_FORMS = (
    "a redis://, rediss:// or unix:// URL, a dict of redis.Redis arguments, "
    "a redis+sentinel://host:port[,host:port]/SERVICE_NAME[/DB] or redis+cluster://host:port[,host:port] URL, "
    'or a Sentinel dict {"sentinels": [(host, port)], "master_name": ...} '
    'or Cluster dict {"cluster": True, "startup_nodes": [(host, port)]}'
)


class Topology(Enum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisTarget:
    """What ``WS4REDIS_CONNECTION`` says, checked: the kind of deployment and how to reach it."""

    topology: Topology
    #: The URL of a standalone Redis given as a URL.
    url: str | None = None
    #: redis.Redis arguments: of the one Redis, of the Sentinel's master, or of every Cluster node.
    options: dict[str, Any] = field(default_factory=dict)
    #: The sentinels, or the Cluster's startup nodes.
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_options: dict[str, Any] = field(default_factory=dict)


def parse(value: Any) -> RedisTarget:
    """Read a ``WS4REDIS_CONNECTION`` value.

    :raises ValueError: with what is wrong and which forms are accepted.
    """
    if isinstance(value, str):
        if value.startswith(SENTINEL_SCHEME):
            return _parse_sentinel_url(value)
        if value.startswith(CLUSTER_SCHEME):
            return _parse_cluster_url(value)
        if not value.startswith(URL_SCHEMES):
            raise ValueError(f"URL scheme must be one of {', '.join((*URL_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME))}")
        redis.Redis.from_url(value)  # raises ValueError with redis-py's reason
        return RedisTarget(Topology.STANDALONE, url=value)
    if isinstance(value, dict):
        if _SENTINEL_KEYS & set(value):
            return _parse_sentinel_dict(value)
        if _CLUSTER_KEYS & set(value):
            return _parse_cluster_dict(value)
        _check_options(value)
        return RedisTarget(Topology.STANDALONE, options=dict(value))
    raise ValueError(f"must be {_FORMS}")


def connection_problems(value: Any) -> list[str]:
    """Why ``value`` is not a usable ``WS4REDIS_CONNECTION`` (empty when it is)."""
    try:
        parse(value)
    except ValueError as exc:
        return [str(exc)]
    return []


def target() -> RedisTarget:
    """The current setting, read once per process and value."""
    value = settings.get("WS4REDIS_CONNECTION")
    return process.resource(f"redis target {setting_key(value)}", lambda: parse(value))


def setting_key(value: Any) -> str:
    return repr(sorted(value.items())) if isinstance(value, dict) else str(value)


# -- reading the forms -----------------------------------------------------------------


def _check_options(options: dict[str, Any], *, placed: bool = False) -> None:
    unknown = sorted(set(options) - _REDIS_ARGUMENTS)
    if unknown:
        raise ValueError("; ".join(f"unknown key {k!r} (not an argument of redis.Redis)" for k in unknown))
    misplaced = sorted(_PLACED & set(options)) if placed else []
    if misplaced:
        raise ValueError(f"{', '.join(map(repr, misplaced))} must not be given: the sentinels or the cluster say where Redis is")


def _address(item: Any, what: str) -> tuple[str, int]:
    """``(host, port)`` from a pair or a ``"host:port"`` string."""
    if isinstance(item, str):
        host, sep, port = item.rpartition(":")
        item = (host, port) if sep else (item, "")
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not item[0] or not isinstance(item[0], str):
        raise ValueError(f"every {what} must be a (host, port) pair or 'host:port', not {item!r}")
    try:
        number = int(item[1])
    except (TypeError, ValueError):
        raise ValueError(f"{what} {item[0]!r} has no valid port: {item[1]!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"{what} {item[0]!r} has no valid port: {number}")
    return item[0], number


def _addresses(items: Any, what: str) -> tuple[tuple[str, int], ...]:
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"at least one {what} is needed, as a list of (host, port) pairs")
    return tuple(_address(item, what) for item in items)


def _split_url(value: str, scheme: str, what: str) -> tuple[dict[str, Any], tuple[tuple[str, int], ...], list[str]]:
    """Password, addresses and path segments of a ``redis+sentinel://`` or ``redis+cluster://`` URL."""
    parts = urlsplit(value)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    options: dict[str, Any] = {}
    if userinfo:
        username, _, password = userinfo.partition(":")
        if username:
            options["username"] = unquote(username)
        if password:
            options["password"] = unquote(password)
    if parts.query or parts.fragment:
        raise ValueError(f"{scheme} URLs take no query string; use the dict form for further options")
    addresses = _addresses([h for h in hosts.split(",") if h], what) if hosts else _addresses([], what)
    return options, addresses, [unquote(p) for p in parts.path.split("/")[1:] if p != ""]


def _db(value: Any) -> int:
    try:
        db = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"the database must be a number, not {value!r}") from None
    if db < 0:
        raise ValueError(f"the database must be a number, not {value!r}")
    return db


def _parse_sentinel_url(value: str) -> RedisTarget:
    options, sentinels, path = _split_url(value, SENTINEL_SCHEME, "sentinel")
    if not path or len(path) > 2:
        raise ValueError(f"a {SENTINEL_SCHEME} URL ends with /SERVICE_NAME or /SERVICE_NAME/DB")
    options["db"] = _db(path[1]) if len(path) == 2 else 0
    return RedisTarget(Topology.SENTINEL, options=options, nodes=sentinels, master_name=path[0])


def _parse_sentinel_dict(value: dict[str, Any]) -> RedisTarget:
    missing = [k for k in ("sentinels", "master_name") if not value.get(k)]
    if missing:
        raise ValueError(f"a Sentinel setting needs {' and '.join(map(repr, missing))}")
    if not isinstance(value["master_name"], str):
        raise ValueError("'master_name' must be the name of the service the sentinels monitor")
    sentinel_options = value.get("sentinel_kwargs") or {}
    if not isinstance(sentinel_options, dict):
        raise ValueError("'sentinel_kwargs' must be a dict of redis.Redis arguments for the sentinels")
    _check_options(sentinel_options, placed=True)
    options = {k: v for k, v in value.items() if k not in _SENTINEL_KEYS}
    _check_options(options, placed=True)
    options["db"] = _db(options.get("db", 0))
    return RedisTarget(
        Topology.SENTINEL,
        options=options,
        nodes=_addresses(value["sentinels"], "sentinel"),
        master_name=value["master_name"],
        sentinel_options=sentinel_options,
    )


def _parse_cluster_url(value: str) -> RedisTarget:
    options, nodes, path = _split_url(value, CLUSTER_SCHEME, "cluster node")
    if path not in ([], ["0"]):
        raise ValueError("a Redis Cluster has one database: a redis+cluster:// URL ends after the nodes")
    return RedisTarget(Topology.CLUSTER, options=options, nodes=nodes)


def _parse_cluster_dict(value: dict[str, Any]) -> RedisTarget:
    if value.get("cluster") is not True:
        raise ValueError("a Cluster setting has 'cluster': True")
    options = {k: v for k, v in value.items() if k not in _CLUSTER_KEYS}
    _check_options(options, placed=True)
    if options.pop("db", 0) not in (0, None):
        raise ValueError("a Redis Cluster has one database: 'db' must be 0")
    return RedisTarget(Topology.CLUSTER, options=options, nodes=_addresses(value.get("startup_nodes"), "cluster node"))


# -- clients -------------------------------------------------------------------------------


class _FollowingSentinelPool(SentinelConnectionPool):
    """A Sentinel-managed pool that asks the sentinels for the master at most once a second.

    redis-py asks only when a connection is made: a pooled connection keeps
    writing to a master the sentinels replaced (a ``SENTINEL FAILOVER``, or a
    master cut off by a partition) until that master is demoted, and what it
    took then is wiped. Here a background thread of the process asks every
    :data:`MASTER_CHECK_INTERVAL`; when the answer changed, redis-py's own
    :meth:`~redis.sentinel.SentinelConnectionPoolProxy.get_master_address`
    drops the idle connections, and those in use are dropped when released
    (they no longer belong to the pool's master). No publish waits for it.
    """

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self._follow()
        return super().get_connection(*args, **kwargs)

    def make_connection(self) -> Any:
        self._follow()  # a connection held outside the pool (bus/held_connection.py) follows the master too
        return super().make_connection()

    def _follow(self) -> None:
        if getattr(self, "_watching_pid", None) != os.getpid():
            self._watching_pid = os.getpid()
            _watch_master(self)


def threads_run(uwsgi_options: dict[str, Any] | None, threading_patched: bool) -> bool:
    """Whether a thread this process starts runs (pure): not under uWSGI 2.0 without ``enable-threads``.

    ``uwsgi_options``: ``uwsgi.opt`` (None outside uWSGI); ``threading_patched``:
    gevent's monkey patching made threads greenlets, which run on gevent's loop.
    """
    if uwsgi_options is None or threading_patched:
        return True
    return any(uwsgi_options.get(option) for option in ("enable-threads", "threads"))


#: The process that warned that its sentinel watch cannot run (once per process).
_warned_in: int | None = None


def _threads_run_here() -> bool:
    try:
        import uwsgi
    except ImportError:
        return True
    import gevent.monkey

    return threads_run(dict(getattr(uwsgi, "opt", None) or {}), gevent.monkey.is_module_patched("threading"))


def _watch_master(pool: SentinelConnectionPool) -> None:
    """Start the thread that re-asks the sentinels for ``pool``'s master; it ends with the pool.

    Under uWSGI without ``enable-threads`` the thread never runs, so say so
    once: the pool then asks only when it opens a connection.
    """
    global _warned_in
    if _warned_in != os.getpid() and not _threads_run_here():
        _warned_in = os.getpid()
        logger.warning(
            "uWSGI runs no Python thread in this process (no enable-threads): the sentinels are asked for the master "
            "only when a connection opens, so after a failover publishes may go to the old master until it is "
            "demoted; add enable-threads = true to this vassal (docs/scale-out.md#sentinel)"
        )
    ref = weakref.ref(pool)

    def watch() -> None:
        while True:
            time.sleep(MASTER_CHECK_INTERVAL)
            watched = ref()
            if watched is None or getattr(watched, "_watching_pid", None) != os.getpid():
                return
            try:
                watched.get_master_address()  # drops the pool's idle connections when the master changed
            except redis.RedisError:
                pass  # no sentinel answers: keep the connections there are (their commands fail or succeed)
            del watched

    threading.Thread(target=watch, name="ws4redis-sentinel-watch", daemon=True).start()


class _BlockingSentinelPool(_FollowingSentinelPool, redis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of opening more than its size.

    redis-py has no such pool; the two combine since redis-py 7.0 (``setup.cfg``).
    """


def master_moved(pool: Any, connection: Any) -> tuple[str, int] | None:
    """The master a Sentinel pool last heard of, when ``connection`` (of that pool) is not to it; else None.

    No round trip: the pool's own thread asks the sentinels once a second
    (:class:`_FollowingSentinelPool`). None for any other pool.
    """
    master = getattr(pool, "master_address", None)
    if master is None or connection is None or (connection.host, connection.port) == tuple(master):
        return None
    return master  # type: ignore[no-any-return]


def connection_retry() -> Retry:
    """The retry of a Sentinel-managed connection: once, at once, after a connection error only (not a timeout)."""
    return Retry(NoBackoff(), CONNECTION_RETRIES, supported_errors=(redis.ConnectionError,))


def make_client(value: Any = None, *, max_connections: int | None = None, **overrides: Any) -> Any:
    """A new client for ``value`` (default: the current setting): ``redis.Redis``, or a :class:`LazyCluster`.

    With ``max_connections`` the client never opens more connections (per
    server) however many greenlets share it: they wait for a free one.
    Building a client opens no connection.
    """
    parsed = target() if value is None else parse(value)
    if parsed.topology is Topology.SENTINEL:
        return _sentinel_client(parsed, max_connections, overrides)
    if parsed.topology is Topology.CLUSTER:
        return _cluster_client(parsed, max_connections, overrides)
    template = _standalone_template(parsed, overrides)
    if max_connections is None:
        return template
    pool = template.connection_pool
    blocking = redis.BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=max_connections,
        timeout=pool.connection_kwargs.get("socket_timeout") or DEFAULT_TIMEOUTS["socket_timeout"],
        **pool.connection_kwargs,
    )
    return redis.Redis(connection_pool=blocking)


def _standalone_template(parsed: RedisTarget, overrides: dict[str, Any]) -> redis.Redis:
    if parsed.url is not None:
        return redis.Redis.from_url(parsed.url, **{**DEFAULT_TIMEOUTS, **overrides})
    kwargs = {**DEFAULT_TIMEOUTS, **parsed.options, **overrides}
    client = redis.Redis(**kwargs)
    if "unix_socket_path" in kwargs:
        # redis.Redis drops socket_connect_timeout for unix sockets; the
        # connection class honours it, so put it back.
        client.connection_pool.connection_kwargs["socket_connect_timeout"] = kwargs["socket_connect_timeout"]
    return client


def _sentinel_client(parsed: RedisTarget, max_connections: int | None, overrides: dict[str, Any]) -> redis.Redis:
    # The sentinels are asked in turn, each with short timeouts; one that does not answer is
    # not asked again. A command whose connection broke is tried once more (on the master the
    # sentinels name then: a demoted master's "READONLY" is such a break), one that timed out
    # is not: a publish raises within its timeouts (see CONNECTION_RETRIES).
    sentinel = Sentinel(
        list(parsed.nodes),
        sentinel_kwargs={**SENTINEL_TIMEOUTS, "retry": Retry(NoBackoff(), 0), **parsed.sentinel_options},
        **{**DEFAULT_TIMEOUTS, "retry": connection_retry(), **parsed.options},
    )
    kwargs: dict[str, Any] = {"connection_pool_class": _FollowingSentinelPool, **overrides}
    if max_connections is not None:
        kwargs.update(
            connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections,
            timeout=parsed.options.get("socket_timeout") or DEFAULT_TIMEOUTS["socket_timeout"],
        )
    return sentinel.master_for(parsed.master_name, **kwargs)


class LazyCluster:
    """A :class:`RedisCluster` made on first use, and made again on each use until that succeeds.

    RedisCluster reads the slots of its startup nodes when it is made: a
    worker or a Django process that starts while the Cluster is unreachable
    must still start, and its commands must fail as they do with one Redis
    down (``redis.ConnectionError``), not with RedisCluster's own exception.
    """

    def __init__(self, build: Callable[[], RedisCluster]) -> None:
        self._build = build
        self._client: RedisCluster | None = None

    def client(self) -> RedisCluster:
        if self._client is None:
            try:
                self._client = self._build()
            except RedisClusterException as exc:
                raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        return self._client

    def close(self) -> None:
        """Close the client's connections, if it was ever made."""
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)


def _cluster_client(parsed: RedisTarget, max_connections: int | None, overrides: dict[str, Any]) -> LazyCluster:
    return LazyCluster(lambda: _build_cluster(parsed, max_connections, overrides))


class _BoundedCluster(RedisCluster):
    """A RedisCluster that tries a command again after a connection error, never after a timeout.

    RedisCluster's own list also holds ``TimeoutError``: a frozen master (or
    one cut off by a partition) then costs one ``socket_timeout`` per retry
    (55 s for a publish with redis-py's defaults). Retried this way, a
    publish raises within one timeout (see :data:`CONNECTION_RETRIES`).
    """

    ERRORS_ALLOW_RETRY = (redis.ConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


def _build_cluster(parsed: RedisTarget, max_connections: int | None, overrides: dict[str, Any]) -> RedisCluster:
    kwargs: dict[str, Any] = {**DEFAULT_TIMEOUTS, **parsed.options, **overrides}
    kwargs.pop("retry", None)  # RedisCluster retries itself; its nodes must not
    (host, port), *others = parsed.nodes
    startup = [ClusterNode(h, p) for h, p in others]
    if max_connections is None:
        return _BoundedCluster(host=host, port=port, startup_nodes=startup, **kwargs)
    # Only through a URL does RedisCluster take a pool class for its nodes.
    return _BoundedCluster(
        url=f"redis://{host}:{port}",
        startup_nodes=startup,
        connection_pool_class=redis.BlockingConnectionPool,
        max_connections=max_connections,
        timeout=kwargs["socket_timeout"] or DEFAULT_TIMEOUTS["socket_timeout"],
        **kwargs,
    )


def node_client(host: str, port: int, **overrides: Any) -> redis.Redis:
    """A client of one Cluster node, with the setting's password, TLS and timeouts (for pub/sub)."""
    parsed = target()
    return redis.Redis(host=host, port=port, **{**DEFAULT_TIMEOUTS, **parsed.options, **overrides})


#: What a worker's hub names its pub/sub connections (``CLIENT SETNAME``), before ``:<host>:<pid>``.
HUB_CLIENT_NAME = "ws4redis-hub"


def client_name() -> str:
    """The name of this process's hub connections: ``manage.py ws4redis workers`` lists them from ``CLIENT LIST``."""
    return f"{HUB_CLIENT_NAME}:{socket.gethostname()}:{os.getpid()}"


def get_client() -> Any:
    """The process-wide client for the current setting, shared by publishers.

    Keyed by the setting's value so that ``override_settings`` gets a client
    for the overridden server.
    """
    value = settings.get("WS4REDIS_CONNECTION")
    return process.resource(f"publisher client {setting_key(value)}", lambda: make_client(value))


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (sync or asyncio) talks to a Redis Cluster (sharded pub/sub, one slot per script)."""
    return isinstance(client, (RedisCluster, LazyCluster, AsyncRedisCluster))


def sharded() -> bool:
    """Whether the current setting names a Redis Cluster: channel names then carry a hash tag."""
    return target().topology is Topology.CLUSTER


def mget(client: Any, keys: Sequence[str]) -> list[Any]:
    """The values of ``keys``: one MGET on one Redis; slot by slot, pipelined per shard, on a Cluster."""
    if is_cluster(client):
        return client.mget_nonatomic(keys)  # type: ignore[no-any-return]
    return client.mget(keys)  # type: ignore[no-any-return]


def pipelined(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The replies to ``commands`` (each a command and its arguments), sent in one pipeline without MULTI."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()  # type: ignore[no-any-return]
