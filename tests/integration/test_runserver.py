"""The development server end to end: a real ``manage.py runserver`` serving pages and websockets on one port.

The test site's settings name ``ws4redis_uwsgi.django_runserver.application``
as ``WSGI_APPLICATION``; ``ws4redis_uwsgi`` is its only app with a
``runserver`` command, so ``manage.py runserver`` is this package's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from tests.conftest import SITE_ENV
from tests.integration.helpers import SITE_ORIGIN, client, facility, recv
from tests.servers import REPO, free_port, port_open, wait_for
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MANAGE = REPO / "tests" / "testsite" / "manage.py"


class Runserver:
    """``python tests/testsite/manage.py runserver 127.0.0.1:<free port>`` in its own process group."""

    def __init__(self, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.args = args
        self.env = {**os.environ, **SITE_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Runserver:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{self.port}", *self.args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"runserver exited with {self.proc.returncode}:\n{self.log_text()}")
            return port_open(self.port)

        wait_for(ready, 30, f"runserver on port {self.port}")

    def interrupt(self, timeout: float = 10) -> int:
        """Ctrl-C, as in a terminal: SIGINT to the whole process group; the exit status."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def runserver(redis_server, site_db, tmp_path_factory):
    server = Runserver(tmp_path_factory.mktemp("runserver") / "runserver.log", "--noreload").start()
    yield server
    server.stop()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def upgrade_request(target: str) -> bytes:
    """A browser's upgrade request, with RFC 6455's example key."""
    return (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
    ).encode()


def close_code_received(ws) -> int | None:
    """The code of the close frame the server sent, None when the connection just ended."""
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd is not None else None


def status_of(server, path: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        with client(server, path):
            pass
    return refused.value.response.status_code


# -- pages and websockets on one port ---------------------------------------------------


def test_a_page_is_served_by_django(runserver):
    assert get(runserver.http_url + "/page/") == (200, b"a page of the test site")
    assert get(runserver.http_url + "/no-such-page/")[0] == 404


def test_the_serving_process_was_patched_before_django_was_imported(runserver):
    """With --noreload the command re-executes itself through gevent_launcher.py, keeping its process id."""
    command_line = psutil.Process(runserver.proc.pid).cmdline()
    assert Path(command_line[1]).name == "gevent_launcher.py"
    assert command_line[2:] == [str(MANAGE), "runserver", f"127.0.0.1:{runserver.port}", "--noreload"]


def test_a_subscriber_receives_what_a_view_publishes(runserver):
    fac = facility()
    with client(runserver, f"/ws/{fac}?subscribe-broadcast") as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("hello from a view", expire=0)
        assert recv(ws) == "hello from a view"


def test_a_persisted_message_arrives_on_connect(runserver, login):
    fac = facility()
    RedisPublisher(facility=fac, users=["john"]).publish_message("kept for john", expire=30)
    with client(runserver, f"/ws/{fac}?subscribe-user", login("john")) as ws:
        assert recv(ws) == "kept for john"


def test_a_client_publishes_and_another_receives(runserver, login):
    fac = facility()
    with (
        client(runserver, f"/ws/{fac}?subscribe-broadcast", login("mary")) as reader,
        client(runserver, f"/ws/{fac}?publish-broadcast", login("john")) as writer,
    ):
        for i in range(20):
            writer.send(f"message {i}")
        assert [recv(reader) for _ in range(20)] == [f"message {i}" for i in range(20)]


def test_text_stays_text_and_binary_stays_binary(runserver):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    with client(runserver, f"/ws/{fac}?subscribe-broadcast") as ws:
        publisher.publish_message("grüße", expire=0)
        assert recv(ws) == "grüße"
        publisher.publish_message(b"\xff\x00\xfe", expire=0)
        assert recv(ws) == b"\xff\x00\xfe"
        publisher.publish_message(b"utf-8 but binary", expire=0, binary=True)
        assert recv(ws) == b"utf-8 but binary"


def test_binary_from_a_client_reaches_another_as_binary(runserver):
    fac = facility()
    with (
        client(runserver, f"/ws/{fac}?subscribe-broadcast") as reader,
        client(runserver, f"/ws/{fac}?publish-broadcast") as writer,
    ):
        writer.send(b"\x89PNG\r\n\x1a\n\x00")
        assert recv(reader) == b"\x89PNG\r\n\x1a\n\x00"


def test_a_frame_sent_right_behind_the_request_is_not_lost(runserver):
    """Bytes the HTTP parser read past the request belong to the websocket."""
    fac = facility()
    frames = Connection(ConnectionType.CLIENT)
    with socket.create_connection(("127.0.0.1", runserver.port), timeout=5) as raw:
        raw.sendall(upgrade_request(f"/ws/{fac}?subscribe-broadcast&publish-broadcast&echo") + frames.send(TextMessage("early")))
        response = b""
        while b"\r\n\r\n" not in response:
            response += raw.recv(4096)
        head, rest = response.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 ")
        frames.receive_data(rest)
        while not (events := list(frames.events())):
            frames.receive_data(raw.recv(4096))
        assert events[0] == TextMessage(data="early")


def test_heartbeat_and_ping_are_answered(runserver):
    with client(runserver, f"/ws/{facility()}?subscribe-broadcast&publish-broadcast") as ws:
        ws.send("--heartbeat--")
        assert recv(ws) == "--heartbeat--"
        assert ws.ping(b"are you there").wait(5)


# -- refusals, as under uWSGI ------------------------------------------------------------


def test_plain_http_request_to_the_websocket_url_gets_426(runserver):
    status, body = get(runserver.http_url + "/ws/x?subscribe-broadcast")
    assert status == 426
    assert b"upgrade" in body


@pytest.mark.parametrize("path", ["/ws/a:b", "/ws/a*", "/ws/a%0Ab", "/ws/"])
def test_bad_facility_gets_400(runserver, path):
    assert status_of(runserver, path + "?subscribe-broadcast") == 400


def test_allowed_channels_hook_refuses_with_403(runserver, login):
    with pytest.raises(InvalidStatus) as refused:
        with client(runserver, "/ws/staff-only?subscribe-broadcast", login("john")):
            pass
    assert refused.value.response.status_code == 403


def test_foreign_origin_gets_403(runserver):
    with pytest.raises(InvalidStatus) as refused:
        with client(runserver, f"/ws/{facility()}?subscribe-broadcast", origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403


def test_upgrade_requests_outside_the_websocket_url_go_to_django(runserver):
    assert status_of(runserver, "/page/") == 200


# -- closing ---------------------------------------------------------------------------------


def test_a_client_close_is_answered(runserver):
    fac = facility()
    with client(runserver, f"/ws/{fac}?subscribe-broadcast") as ws:
        ws.close(1000, "bye")
        assert ws.protocol.close_rcvd is not None  # not an abnormal (1006) end
        assert ws.protocol.close_rcvd.code == 1000  # the client's code, echoed
        assert ws.protocol.close_rcvd_then_sent is False  # the client closed first
    with client(runserver, f"/ws/{fac}?subscribe-broadcast") as ws:  # the server goes on
        RedisPublisher(facility=fac, broadcast=True).publish_message("still serving", expire=0)
        assert recv(ws) == "still serving"


def test_a_client_that_vanishes_is_dropped(runserver, redis_client):
    fac = facility()
    with socket.create_connection(("127.0.0.1", runserver.port), timeout=5) as raw:
        raw.sendall(upgrade_request(f"/ws/{fac}?subscribe-broadcast"))
        response = raw.recv(4096)
        assert response.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response  # RFC 6455's example
    # The connection ended without a close frame: the server leaves the channel.
    wait_for(lambda: dict(redis_client.pubsub_numsub(f"test:broadcast:{fac}"))[f"test:broadcast:{fac}".encode()] == 0)


@pytest.mark.parametrize("size", [100 * 1024, 2 * 1024 * 1024])
def test_a_message_too_big_closes_with_1009(runserver, size):
    """Above WS4REDIS_MAX_MESSAGE_SIZE (64 KiB), and above the 1 MiB the adapter ever holds."""
    with client(runserver, f"/ws/{facility()}?publish-broadcast") as ws:
        ws.send(b"x" * size)
        with pytest.raises(ConnectionClosed):
            recv(ws)
        assert close_code_received(ws) == CloseCode.MESSAGE_TOO_BIG
    fac = facility()
    with client(runserver, f"/ws/{fac}?subscribe-broadcast") as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("still serving", expire=0)
        assert recv(ws) == "still serving"


# -- with django.contrib.staticfiles -------------------------------------------------------


def test_with_staticfiles_static_files_pages_and_websockets_are_served(redis_server, site_db, tmp_path):
    """Listed above staticfiles, the command keeps staticfiles' runserver behaviour: static files under DEBUG."""
    (tmp_path / "static_settings.py").write_text(
        "from tests.testsite.settings import *  # noqa: F403\n"
        "DEBUG = True\n"
        'STATIC_URL = "/static/"\n'
        'INSTALLED_APPS = ["ws4redis_uwsgi", "django.contrib.staticfiles", *INSTALLED_APPS[:-1]]  # noqa: F405\n'
    )
    server = Runserver(
        tmp_path / "runserver.log",
        "--noreload",
        env={"DJANGO_SETTINGS_MODULE": "static_settings", "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
    ).start()
    try:
        status, body = get(server.http_url + "/static/js/ws4redis.js")
        assert status == 200
        assert b"WS4Redis" in body
        assert get(server.http_url + "/page/") == (200, b"a page of the test site")
        fac = facility()
        with client(server, f"/ws/{fac}?subscribe-broadcast") as ws:
            RedisPublisher(facility=fac, broadcast=True).publish_message("static and live", expire=0)
            assert recv(ws) == "static and live"
    finally:
        server.stop()


# -- autoreload and Ctrl-C -------------------------------------------------------------------


def test_autoreload_restarts_the_server_and_closes_websockets_with_1012(redis_server, site_db, tmp_path):
    """Django's autoreloader runs in a patched child; a changed file restarts it, and clients reconnect."""
    (tmp_path / "reload_settings.py").write_text("from tests.testsite.settings import *  # noqa: F403\n")
    server = Runserver(
        tmp_path / "runserver.log",
        env={"DJANGO_SETTINGS_MODULE": "reload_settings", "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
    ).start()
    try:
        parent = psutil.Process(server.proc.pid)
        (first_child,) = parent.children()
        assert Path(first_child.cmdline()[1]).name == "gevent_launcher.py"
        fac = facility()
        with client(server, f"/ws/{fac}?subscribe-broadcast&publish-broadcast&echo") as ws:
            ws.send("before the reload")
            assert recv(ws) == "before the reload"
            os.utime(tmp_path / "reload_settings.py")  # what saving the file in an editor does
            with pytest.raises(ConnectionClosed):
                recv(ws)
            assert close_code_received(ws) == CloseCode.SERVICE_RESTART
        wait_for(lambda: [c.pid for c in parent.children()] not in ([], [first_child.pid]), 10, "a new child")
        server.wait_ready()
        with client(server, f"/ws/{facility()}?subscribe-broadcast&publish-broadcast&echo") as ws:
            ws.send("after the reload")
            assert recv(ws) == "after the reload"
        assert get(server.http_url + "/page/")[0] == 200
        with client(server, f"/ws/{facility()}?subscribe-broadcast") as ws:
            assert server.interrupt() == 0
            with pytest.raises(ConnectionClosed):
                recv(ws)
            assert close_code_received(ws) == CloseCode.SERVICE_RESTART
        assert not port_open(server.port)
    finally:
        server.stop()


def test_ctrl_c_stops_the_server_without_reload(redis_server, site_db, tmp_path):
    server = Runserver(tmp_path / "runserver.log", "--noreload").start()
    try:
        with client(server, f"/ws/{facility()}?subscribe-broadcast") as ws:
            assert server.interrupt() == 0
            with pytest.raises(ConnectionClosed):
                recv(ws)
            assert close_code_received(ws) == CloseCode.SERVICE_RESTART
    finally:
        server.stop()


def test_a_token_offered_as_a_subprotocol_lets_its_user_in(runserver):
    from django.contrib.auth.models import User
    from websockets.sync.client import connect

    from ws4redis_uwsgi.django.tokens import issue_token

    token = issue_token(User.objects.get(username="john"))
    fac = facility()
    with connect(
        f"{runserver.url}/ws/{fac}?subscribe-user", origin=SITE_ORIGIN, subprotocols=["ws4redis", f"ws4redis.token.{token}"]
    ) as ws:
        assert ws.subprotocol == "ws4redis"
        RedisPublisher(facility=fac, users=["john"]).publish_message("for john", expire=0)
        assert recv(ws) == "for john"
