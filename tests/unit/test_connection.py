"""WS4REDIS_CONNECTION: validation and the clients built from it (no connection is opened)."""

import re

import pytest
import redis
from django.test import override_settings
from redis.sentinel import SentinelConnectionPool

from ws4redis_uwsgi.bus import connection
from ws4redis_uwsgi.bus.connection import (
    DEFAULT_TIMEOUTS,
    RedisTarget,
    Topology,
    connection_problems,
    make_client,
    parse,
)


@pytest.mark.parametrize(
    "value",
    [
        {"host": "localhost", "port": 6379, "db": 0, "password": None},
        {},
        {"unix_socket_path": "/tmp/r.sock", "db": 1},
        {"host": "h", "ssl": True, "socket_timeout": 1},
        "redis://localhost:6379/0",
        "redis://:secret@h:7000/2",
        "rediss://h:6380/1",
        "unix:///tmp/r.sock",
        "unix:///tmp/r.sock?db=3",
    ],
)
def test_usable_connection_settings_have_no_problems(value):
    assert connection_problems(value) == []


def test_an_unknown_key_is_named():
    assert connection_problems({"host": "h", "hots": "x", "bogus": 1}) == [
        "unknown key 'bogus' (not an argument of redis.Redis); unknown key 'hots' (not an argument of redis.Redis)"
    ]


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "", "redis:/h", "tcp://h:6379", "redis+sentinl://h:1/m"])
def test_a_url_with_another_scheme_is_refused(url):
    assert connection_problems(url) == [
        "URL scheme must be one of redis://, rediss://, unix://, redis+sentinel://, redis+cluster://"
    ]


def test_a_url_redis_py_cannot_read_is_refused_with_its_reason():
    problems = connection_problems("redis://h:notaport/0")
    assert len(problems) == 1
    assert "notaport" in problems[0]


@pytest.mark.parametrize("value", [42, None, ["redis://h"], ("host", "h"), b"redis://h", 1.5])
def test_neither_dict_nor_url_is_refused_with_every_accepted_form(value):
    (problem,) = connection_problems(value)
    assert problem.startswith("must be a redis://, rediss:// or unix:// URL, a dict of redis.Redis arguments")
    for form in ("redis+sentinel://", "redis+cluster://", '"sentinels"', '"master_name"', '"cluster": True', '"startup_nodes"'):
        assert form in problem


# -- Sentinel and Cluster: what the setting says ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "redis+sentinel://h1:26379/mymaster",
            RedisTarget(Topology.SENTINEL, options={"db": 0}, nodes=(("h1", 26379),), master_name="mymaster"),
        ),
        (
            "redis+sentinel://:s%40cret@h1:26379,h2:26380/mymaster/2",
            RedisTarget(
                Topology.SENTINEL,
                options={"password": "s@cret", "db": 2},
                nodes=(("h1", 26379), ("h2", 26380)),
                master_name="mymaster",
            ),
        ),
        (
            "redis+sentinel://app:pw@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/my%20service/0",
            RedisTarget(
                Topology.SENTINEL,
                options={"username": "app", "password": "pw", "db": 0},
                nodes=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)),
                master_name="my service",
            ),
        ),
        (
            {"sentinels": [("h1", 26379), ["h2", "26380"], "h3:26381"], "master_name": "mymaster"},
            RedisTarget(
                Topology.SENTINEL,
                options={"db": 0},
                nodes=(("h1", 26379), ("h2", 26380), ("h3", 26381)),
                master_name="mymaster",
            ),
        ),
        (
            {
                "sentinels": [("h1", 26379)],
                "master_name": "mymaster",
                "db": 3,
                "password": "pw",
                "username": "app",
                "socket_timeout": 2,
                "sentinel_kwargs": {"password": "sentinel-pw"},
            },
            RedisTarget(
                Topology.SENTINEL,
                options={"db": 3, "password": "pw", "username": "app", "socket_timeout": 2},
                nodes=(("h1", 26379),),
                master_name="mymaster",
                sentinel_options={"password": "sentinel-pw"},
            ),
        ),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "db": "4", "password": None, "sentinel_kwargs": {}},
            RedisTarget(Topology.SENTINEL, options={"db": 4, "password": None}, nodes=(("h1", 26379),), master_name="m"),
        ),
        (
            "redis+cluster://h1:7000",
            RedisTarget(Topology.CLUSTER, nodes=(("h1", 7000),)),
        ),
        (
            "redis+cluster://:pw@h1:7000,h2:7001/0",
            RedisTarget(Topology.CLUSTER, options={"password": "pw"}, nodes=(("h1", 7000), ("h2", 7001))),
        ),
        (
            "redis+cluster://app:pw@h1:7000/",
            RedisTarget(Topology.CLUSTER, options={"username": "app", "password": "pw"}, nodes=(("h1", 7000),)),
        ),
        (
            {"cluster": True, "startup_nodes": [("h1", 7000), "h2:7001"], "password": "pw"},
            RedisTarget(Topology.CLUSTER, options={"password": "pw"}, nodes=(("h1", 7000), ("h2", 7001))),
        ),
        (
            {"cluster": True, "startup_nodes": [("h1", 7000)], "password": None, "db": 0, "ssl": True},
            RedisTarget(Topology.CLUSTER, options={"password": None, "ssl": True}, nodes=(("h1", 7000),)),
        ),
        ("redis://h:7000/3", RedisTarget(Topology.STANDALONE, url="redis://h:7000/3")),
        ({"host": "h", "db": 1}, RedisTarget(Topology.STANDALONE, options={"host": "h", "db": 1})),
    ],
)
def test_each_form_of_the_setting_reads_as_its_topology_and_nodes(value, expected):
    assert parse(value) == expected
    assert connection_problems(value) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        # Sentinel URLs
        ("redis+sentinel://h1:26379", "a redis+sentinel:// URL ends with /SERVICE_NAME or /SERVICE_NAME/DB"),
        ("redis+sentinel://h1:26379/", "a redis+sentinel:// URL ends with /SERVICE_NAME or /SERVICE_NAME/DB"),
        ("redis+sentinel://h1:26379/m/1/2", "a redis+sentinel:// URL ends with /SERVICE_NAME or /SERVICE_NAME/DB"),
        ("redis+sentinel:///mymaster", "at least one sentinel is needed, as a list of (host, port) pairs"),
        ("redis+sentinel://:pw@/mymaster", "at least one sentinel is needed, as a list of (host, port) pairs"),
        ("redis+sentinel://h1:port/mymaster", "sentinel 'h1' has no valid port: 'port'"),
        ("redis+sentinel://h1/mymaster", "sentinel 'h1' has no valid port: ''"),
        ("redis+sentinel://h1:26379,h2:0/mymaster", "sentinel 'h2' has no valid port: 0"),
        ("redis+sentinel://h1:65536/mymaster", "sentinel 'h1' has no valid port: 65536"),
        ("redis+sentinel://:26379/mymaster", "every sentinel must be a (host, port) pair or 'host:port', not ('', '26379')"),
        ("redis+sentinel://h1:26379/mymaster/two", "the database must be a number, not 'two'"),
        ("redis+sentinel://h1:26379/mymaster/-1", "the database must be a number, not '-1'"),
        ("redis+sentinel://h1:26379/mymaster?db=1", "redis+sentinel:// URLs take no query string"),
        ("redis+sentinel://h1:26379/mymaster#x", "redis+sentinel:// URLs take no query string"),
        # Cluster URLs
        ("redis+cluster://h1:7000/1", "a Redis Cluster has one database: a redis+cluster:// URL ends after the nodes"),
        ("redis+cluster://h1:7000/0/0", "a Redis Cluster has one database: a redis+cluster:// URL ends after the nodes"),
        ("redis+cluster://h1:7000?ssl=true", "redis+cluster:// URLs take no query string"),
        ("redis+cluster://", "at least one cluster node is needed, as a list of (host, port) pairs"),
        ("redis+cluster://h1:7000,h2/", "cluster node 'h2' has no valid port: ''"),
        # Sentinel dicts
        ({"sentinels": [("h1", 26379)]}, "a Sentinel setting needs 'master_name'"),
        ({"sentinels": [("h1", 26379)], "master_name": ""}, "a Sentinel setting needs 'master_name'"),
        ({"master_name": "m"}, "a Sentinel setting needs 'sentinels'"),
        ({"sentinels": [], "master_name": "m"}, "a Sentinel setting needs 'sentinels'"),
        ({"sentinel_kwargs": {}}, "a Sentinel setting needs 'sentinels' and 'master_name'"),
        ({"sentinels": [("h1", 26379)], "master_name": 5}, "'master_name' must be the name of the service"),
        ({"sentinels": "h1:26379", "master_name": "m"}, "at least one sentinel is needed, as a list of (host, port) pairs"),
        ({"sentinels": [("h1", "x")], "master_name": "m"}, "sentinel 'h1' has no valid port: 'x'"),
        ({"sentinels": [("h1", 26379, 0)], "master_name": "m"}, "every sentinel must be a (host, port) pair"),
        ({"sentinels": [("h1", 26379)], "master_name": "m", "db": "one"}, "the database must be a number, not 'one'"),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "host": "h", "port": 6379},
            "'host', 'port' must not be given: the sentinels or the cluster say where Redis is",
        ),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "unix_socket_path": "/tmp/r.sock"},
            "'unix_socket_path' must not be given",
        ),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "sentinel_kwargs": {"port": 1}},
            "'port' must not be given",
        ),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "sentinel_kwrags": {}},
            "unknown key 'sentinel_kwrags' (not an argument of redis.Redis)",
        ),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "sentinel_kwargs": {"pasword": "x"}},
            "unknown key 'pasword' (not an argument of redis.Redis)",
        ),
        (
            {"sentinels": [("h1", 26379)], "master_name": "m", "sentinel_kwargs": "password=x"},
            "'sentinel_kwargs' must be a dict of redis.Redis arguments for the sentinels",
        ),
        # Cluster dicts
        ({"cluster": "yes", "startup_nodes": [("h1", 7000)]}, "a Cluster setting has 'cluster': True"),
        ({"cluster": 1, "startup_nodes": [("h1", 7000)]}, "a Cluster setting has 'cluster': True"),
        ({"startup_nodes": [("h1", 7000)]}, "a Cluster setting has 'cluster': True"),
        ({"cluster": True}, "at least one cluster node is needed, as a list of (host, port) pairs"),
        ({"cluster": True, "startup_nodes": []}, "at least one cluster node is needed, as a list of (host, port) pairs"),
        ({"cluster": True, "startup_nodes": [("h1", 7000)], "db": 2}, "a Redis Cluster has one database: 'db' must be 0"),
        ({"cluster": True, "startup_nodes": [("h1", 7000)], "host": "h"}, "'host' must not be given"),
        ({"cluster": True, "startup_nodes": [("h1", 7000)], "nodes": []}, "unknown key 'nodes' (not an argument of redis.Redis)"),
    ],
)
def test_a_bad_sentinel_or_cluster_setting_is_refused_with_its_reason(value, problem):
    (found,) = connection_problems(value)
    assert found.startswith(problem)
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        parse(value)


def kwargs_of(client):
    return client.connection_pool.connection_kwargs


@pytest.mark.parametrize(
    ("value", "expected", "connection_class"),
    [
        ({"host": "h", "port": 7000, "db": 3}, {"host": "h", "port": 7000, "db": 3}, redis.Connection),
        ("redis://h:7000/3", {"host": "h", "port": 7000, "db": 3}, redis.Connection),
        ("rediss://h:7000/3", {"host": "h", "port": 7000, "db": 3}, redis.SSLConnection),
        ({"host": "h", "port": 7000, "ssl": True}, {"host": "h", "port": 7000, "db": 0}, redis.SSLConnection),
        ("unix:///tmp/r.sock", {"path": "/tmp/r.sock"}, redis.UnixDomainSocketConnection),
        ("unix:///tmp/r.sock?db=2", {"path": "/tmp/r.sock", "db": 2}, redis.UnixDomainSocketConnection),
        ({"unix_socket_path": "/tmp/r.sock", "db": 2}, {"path": "/tmp/r.sock", "db": 2}, redis.UnixDomainSocketConnection),
    ],
)
@pytest.mark.parametrize("max_connections", [None, 3])
def test_clients_carry_the_setting_and_5_second_timeouts(value, expected, connection_class, max_connections):
    client = make_client(value, max_connections=max_connections)
    kwargs = kwargs_of(client)
    assert {k: kwargs.get(k) for k in expected} == expected
    # README: "connect and socket timeouts default to 5 s", for both forms of the setting.
    assert kwargs.get("socket_connect_timeout") == 5.0
    assert kwargs.get("socket_timeout") == 5.0
    assert client.connection_pool.connection_class is connection_class


def test_the_default_timeouts():
    assert DEFAULT_TIMEOUTS == {"socket_connect_timeout": 5.0, "socket_timeout": 5.0}


@pytest.mark.parametrize("value", [{"host": "h"}, "redis://h/0"])
def test_timeouts_can_be_overridden_by_argument(value):
    kwargs = kwargs_of(make_client(value, socket_timeout=1.5, socket_connect_timeout=0.5))
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 0.5


def test_timeouts_can_be_overridden_by_the_setting():
    kwargs = kwargs_of(make_client({"host": "h", "socket_timeout": 2, "socket_connect_timeout": 1}))
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2, 1)
    kwargs = kwargs_of(make_client("redis://h/0?socket_timeout=2&socket_connect_timeout=1"))
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2, 1)


def test_without_max_connections_the_pool_is_redis_py_default():
    pool = make_client({"host": "h"}).connection_pool
    assert type(pool) is redis.ConnectionPool


@pytest.mark.parametrize("value", [{"host": "h", "port": 7000, "db": 3}, "redis://h:7000/3"])
def test_max_connections_gives_a_blocking_pool_of_that_size(value):
    pool = make_client(value, max_connections=3).connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections == 3
    assert pool.timeout == 5.0  # waiting for a free connection gives up like a socket would
    assert {k: pool.connection_kwargs[k] for k in ("host", "port", "db")} == {"host": "h", "port": 7000, "db": 3}


def test_a_password_reaches_the_connection():
    assert kwargs_of(make_client({"host": "h", "password": "s3cret"}))["password"] == "s3cret"
    assert kwargs_of(make_client("redis://:s3cret@h/0"))["password"] == "s3cret"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("redis://example.org:7001/4", {"host": "example.org", "port": 7001, "db": 4}),
        ({"host": "example.org", "port": 7002, "db": 5}, {"host": "example.org", "port": 7002, "db": 5}),
    ],
)
def test_make_client_reads_the_current_setting_by_default(setting, expected):
    with override_settings(WS4REDIS_CONNECTION=setting):
        kwargs = kwargs_of(make_client())
    assert {k: kwargs[k] for k in expected} == expected


# -- Sentinel clients -------------------------------------------------------------------------

SENTINEL_URL = "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2"


@pytest.mark.parametrize("max_connections", [None, 3])
def test_a_sentinel_client_asks_the_sentinels_for_the_master_with_short_timeouts(max_connections):
    client = make_client(SENTINEL_URL, max_connections=max_connections)
    pool = client.connection_pool
    assert isinstance(client, redis.Redis)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert {k: pool.connection_kwargs.get(k) for k in ("db", "password", "socket_timeout", "socket_connect_timeout")} == {
        "db": 2,
        "password": "pw",
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
    }
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(k["host"], k["port"], k["socket_timeout"], k["socket_connect_timeout"]) for k in sentinels] == [
        ("h1", 26379, 0.5, 0.5),
        ("h2", 26380, 0.5, 0.5),
    ]


def test_a_sentinel_client_without_max_connections_has_redis_py_unbounded_pool():
    pool = make_client(SENTINEL_URL).connection_pool
    assert isinstance(pool, SentinelConnectionPool)  # re-asking the sentinels once a second
    assert not isinstance(pool, redis.BlockingConnectionPool)


def test_a_sentinel_client_retries_a_connection_error_once_and_a_timeout_never():
    retry = make_client(SENTINEL_URL).connection_pool.connection_kwargs["retry"]
    assert retry.get_retries() == 1
    assert set(retry._supported_errors) == {redis.ConnectionError}


def test_a_sentinel_client_with_max_connections_waits_for_a_free_connection():
    pool = make_client(SENTINEL_URL, max_connections=3).connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections == 3
    assert pool.timeout == 5.0  # waiting for a free connection gives up like a socket would
    assert pool.pool.maxsize == 3  # the queue it waits on


def test_the_sentinel_dict_reaches_the_master_and_the_sentinels():
    value = {
        "sentinels": [("h1", 26379)],
        "master_name": "mymaster",
        "db": 1,
        "password": "master-pw",
        "socket_timeout": 2,
        "sentinel_kwargs": {"password": "sentinel-pw", "socket_connect_timeout": 1},
    }
    pool = make_client(value, max_connections=4).connection_pool
    assert {k: pool.connection_kwargs[k] for k in ("db", "password", "socket_timeout", "socket_connect_timeout")} == {
        "db": 1,
        "password": "master-pw",
        "socket_timeout": 2,
        "socket_connect_timeout": 5.0,
    }
    assert pool.timeout == 2  # waits as long as the setting lets a socket wait
    (sentinel,) = pool.sentinel_manager.sentinels
    kwargs = sentinel.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == ("sentinel-pw", 1, 0.5)


def test_make_client_reads_a_sentinel_setting_by_default():
    # (RedisCluster connects when it is built: Cluster clients are left to the integration tests.)
    with override_settings(WS4REDIS_CONNECTION="redis+sentinel://h1:26379/mymaster/5"):
        pool = make_client().connection_pool
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("mymaster", 5)
    (sentinel,) = pool.sentinel_manager.sentinels
    kwargs = sentinel.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"]) == ("h1", 26379)


def test_a_cluster_client_is_made_on_first_use_and_an_unreachable_cluster_is_a_connection_error():
    from redis.exceptions import RedisClusterException

    from ws4redis_uwsgi.bus.connection import LazyCluster, is_cluster

    attempts = []

    def unreachable():
        attempts.append(1)
        raise RedisClusterException("Redis Cluster cannot be connected")

    lazy = LazyCluster(unreachable)
    assert is_cluster(lazy) and attempts == []  # making it opened nothing
    for _ in range(2):  # every use tries again, and fails as one Redis down does
        with pytest.raises(redis.ConnectionError, match="Redis Cluster unreachable"):
            lazy.pipeline()
    assert len(attempts) == 2
    lazy.close()  # closing what was never made is nothing
    assert not is_cluster(redis.Redis())


# -- the Sentinel watch thread under uWSGI ------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "patched", "run"),
    [
        (None, False, True),  # not under uWSGI
        ({}, False, False),  # uWSGI 2.0's default: no Python thread runs
        ({"enable-threads": True}, False, True),
        ({"threads": b"4"}, False, True),  # (threads imply enable-threads)
        ({}, True, True),  # gevent made threads greenlets
    ],
)
def test_whether_a_thread_of_this_process_runs(options, patched, run):
    assert connection.threads_run(options, patched) is run


def test_a_sentinel_pool_whose_watch_cannot_run_says_so_once_per_process(monkeypatch, caplog):
    monkeypatch.setattr(connection, "_threads_run_here", lambda: False)
    monkeypatch.setattr(connection, "_warned_in", None)
    monkeypatch.setattr(connection.threading, "Thread", lambda **kwargs: type("T", (), {"start": lambda self: None})())
    with caplog.at_level("WARNING", logger="ws4redis_uwsgi"):
        for _ in range(2):
            connection._watch_master(SentinelConnectionPool("mymaster", redis.Sentinel([("127.0.0.1", 1)])))
    assert [r.getMessage() for r in caplog.records if "enable-threads" in r.getMessage()] == [caplog.records[0].getMessage()]
    assert "the sentinels are asked for the master only when a connection opens" in caplog.text
