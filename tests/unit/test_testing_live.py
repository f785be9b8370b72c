"""ws4redis_uwsgi.testing's live server, the parts decided without starting anything: values in, values out."""

from __future__ import annotations

import json
import os

import pytest
from django.test import override_settings

from tests.conftest import default_database
from tests.servers import REPO
from ws4redis_uwsgi.testing import LiveServer
from ws4redis_uwsgi.testing.live import _default_origin, _query_string, worker_databases


def test_the_worker_gets_the_settings_module_redis_databases_and_path():
    server = LiveServer(settings={"WS4REDIS_SESSION_RECHECK": 1})
    server.redis_url = "redis://127.0.0.1:1234/0"
    env = server.worker_environment()
    assert env["DJANGO_SETTINGS_MODULE"] == "ws4redis_uwsgi.testing.worker_settings"
    assert env["WS4REDIS_TESTING_SETTINGS_MODULE"] == "tests.testsite.settings"
    overrides = json.loads(env["WS4REDIS_TESTING_OVERRIDES"])
    assert overrides["WS4REDIS_CONNECTION"] == "redis://127.0.0.1:1234/0"
    assert overrides["WS4REDIS_SESSION_RECHECK"] == 1
    assert overrides["DATABASES"]["default"]["NAME"] == os.environ["WS4REDIS_TEST_DB"]
    # The worker imports this checkout of ws4redis_uwsgi, whatever else is installed.
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert checkout in env["PYTHONPATH"].split(os.pathsep)


def test_the_worker_command_serves_websockets_under_gevent():
    server = LiveServer(cores=7, uwsgi_args=["--websocket-ping-freq", "1"])
    server.port = 4321
    command = server.worker_command()
    assert command[1:3] == ["--http-socket", "127.0.0.1:4321"]
    assert command[command.index("--gevent") + 1] == "7"
    assert command[command.index("--module") + 1] == "ws4redis_uwsgi.wsgi_websocket:application"
    assert command[-2:] == ["--websocket-ping-freq", "1"]


def test_an_in_memory_default_database_cannot_be_shared_and_says_how_to_fix_it():
    with default_database(":memory:"), pytest.raises(RuntimeError, match=r"\['TEST'\]\['NAME'\] = BASE_DIR / 'test.sqlite3'"):
        worker_databases()


def test_an_in_memory_other_database_is_handed_over_as_it_is():
    assert worker_databases()["other"]["NAME"] == ":memory:"


def test_a_stopped_server_stops_again_without_harm():
    server = LiveServer()
    server.stop()
    server.stop()
    assert repr(server) == "<LiveServer stopped>"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?subscribe-user&echo", "subscribe-user&echo"),
        (["subscribe-user", "publish-broadcast"], "subscribe-user&publish-broadcast"),
    ],
)
def test_query_strings(query, expected):
    assert _query_string(query) == expected


@pytest.mark.parametrize(
    ("settings", "origin"),
    [
        ({"ALLOWED_HOSTS": ["testserver", ".example.com"]}, "http://example.com"),
        ({"ALLOWED_HOSTS": ["*"]}, "http://localhost"),
        ({"ALLOWED_HOSTS": [], "DEBUG": True}, "http://localhost"),
        ({"WS4REDIS_ALLOWED_ORIGINS": ["app.example.org"]}, "http://app.example.org"),
    ],
)
def test_the_default_origin_is_one_the_worker_allows(settings, origin):
    with override_settings(**settings):
        assert _default_origin() == origin


def test_capturing_needs_no_testing_extra_and_the_live_part_says_which_it_needs():
    """Without websockets installed (a None in sys.modules hides it) capture_publishes imports; LiveServer names the extra."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["websockets"] = None
import django
django.setup()
from ws4redis_uwsgi.testing import capture_publishes
from ws4redis_uwsgi.publisher import RedisPublisher
with capture_publishes() as published:
    RedisPublisher(facility="chat", broadcast=True).publish_message("no extra")
assert published.one().text == "no extra"
try:
    from ws4redis_uwsgi.testing import LiveServer
except ImportError as exc:
    print(exc)
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (
        run.stdout.strip()
        == "ws4redis_uwsgi.testing's live server needs the testing extra: pip install 'ws4redis-uwsgi[testing]'"
    )
