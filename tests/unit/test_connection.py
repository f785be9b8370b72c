"""WS4REDIS_CONNECTION: validation and the clients built from it (no connection is opened)."""

import pytest
import redis
from django.test import override_settings

from ws4redis_uwsgi.bus.connection import DEFAULT_TIMEOUTS, URL_SCHEMES, connection_problems, make_client


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
        "unknown key 'bogus' (not an argument of redis.Redis)",
        "unknown key 'hots' (not an argument of redis.Redis)",
    ]


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "", "redis:/h", "tcp://h:6379"])
def test_a_url_with_another_scheme_is_refused(url):
    assert connection_problems(url) == [f"URL scheme must be one of {', '.join(URL_SCHEMES)}"]


def test_a_url_redis_py_cannot_read_is_refused_with_its_reason():
    problems = connection_problems("redis://h:notaport/0")
    assert len(problems) == 1
    assert "notaport" in problems[0]


@pytest.mark.parametrize("value", [42, None, ["redis://h"], ("host", "h"), b"redis://h", 1.5])
def test_neither_dict_nor_url_is_refused(value):
    assert connection_problems(value) == ["must be a dict of redis.Redis arguments or a redis://, rediss:// or unix:// URL"]


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
