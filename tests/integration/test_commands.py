"""``manage.py ws4redis publish | presence | history | workers``, run as an operator runs them: a process of its own.

Against the session's real redis-server and uWSGI worker; the clients are
real websockets. Exit statuses: 2 for bad arguments (with the reason),
1 for a Redis that cannot be reached.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv
from tests.servers import REPO, TIMING
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def ws4redis(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(REPO / "tests/testsite/manage.py"), "ws4redis", *args],
        env={**SITE_ENV, **(env or {})},
        cwd=REPO,
        input=stdin,
        capture_output=True,
        timeout=60 * TIMING,
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_publish_reaches_the_audiences_it_names(uwsgi_server, login):
    fac = facility()
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as anyone,
        client(uwsgi_server, f"/ws/{fac}?subscribe-user&subscribe-group", login("john")) as john,
    ):
        done = ws4redis("publish", "--facility", fac, "--broadcast", "to everyone", "--expire", "0")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("published as ") and done.stdout.rstrip().endswith("to 1 receiving worker(s)")
        assert recv(anyone) == "to everyone"
        done = ws4redis("publish", "--facility", fac, "--user", "john", "--user", "mary", stdin=b"from standard input")
        assert done.returncode == 0, done.stderr
        assert recv(john) == "from standard input"
        assert ws4redis("publish", "--facility", fac, "--group", "cooks", "-", "--binary", stdin=b"\x00\xffraw").returncode == 0
        assert recv(john) == b"\x00\xffraw"
    # --expire: the stored message a websocket that opens later gets first.
    assert ws4redis("publish", "--facility", fac, "--broadcast", "kept", "--expire", "30").returncode == 0
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as later:
        assert recv(later) == "kept"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["publish", "--facility", "chat", "hello"], "say who gets it"),
        (["publish", "--facility", "a b", "--broadcast", "hello"], "invalid facility"),
        (["publish", "--facility", "chat", "--broadcast", "--expire", "-1", "hello"], "not a whole number of seconds"),
        (["publish", "--facility", "chat", "--broadcast", ""], "the message is empty"),
        (["publish", "--broadcast", "hello"], "--facility"),
        (["history", "--facility", "chat", "--broadcast", "--user", "john"], "name one channel"),
        (["history", "--facility", "chat", "--broadcast", "--limit", "0"], "not a positive number"),
        (["presence", "chat"], "presence"),
        (["presence", "bad facility"], "facility"),
        (["nothing-such"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(redis_server, args, reason):
    done = ws4redis(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert reason in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [["publish", "--facility", "chat", "--broadcast", "hello"], ["history", "--facility", "chat", "--broadcast"], ["workers"]],
)
def test_an_unreachable_redis_exits_1_with_the_reason(args):
    done = ws4redis(*args, env={"WS4REDIS_TEST_REDIS": "redis://127.0.0.1:1/0"})
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("CommandError: Redis cannot be reached: ")


def test_history_shows_the_last_messages_of_a_channel_oldest_first(redis_server):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    ids = []
    for text in ["one", "two", "three\nwith a newline"]:
        publisher.publish_message(text, expire=0)
        ids.append(publisher.last_message_id)
    RedisPublisher(facility=fac, broadcast=True).publish_message(b"\x00\x01", expire=0, binary=True)
    done = ws4redis("history", "--facility", fac, "--broadcast", "--limit", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split("\t", 1)[1] for line in lines] == ["two", "three\\nwith a newline", "<binary, 2 bytes>"]
    assert [line.split("\t", 1)[0] for line in lines[:2]] == ids[1:]
    assert ws4redis("history", "--facility", facility(), "--user", "nobody").stdout.startswith("no history on ")


def test_presence_lists_who_is_connected(uwsgi_server, login):
    fac = "presence-" + facility()
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", login("john")),
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", login("john")),
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast"),
    ):
        from tests.servers import wait_for
        from ws4redis_uwsgi import presence

        wait_for(lambda: presence.count(fac) == 3, 10, "the connections counted")
        done = ws4redis("presence", fac)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["3 connection(s), 1 user(s)", "john\t2"]
        assert ws4redis("presence", fac, "--count").stdout.splitlines() == ["3 connection(s)"]


def test_workers_lists_each_workers_subscription_connection(uwsgi_server):
    with client(uwsgi_server, f"/ws/{facility()}?subscribe-broadcast"):
        done = ws4redis("workers")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pids = {line.split("\t")[1] for line in lines[1:]}
    assert {f"pid {pid}" for pid in uwsgi_server.worker_pids()} <= pids
