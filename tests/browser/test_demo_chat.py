"""The demo under the uWSGI emperor, driven by headless Chromium.

The fixture runs deploy/run_demo.py, exactly what `make demo` runs (the same
emperor, vassal and nginx files), on a free port with its own run directory
and its own private Redis. john and mary chat from two browser contexts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import psutil
import pytest

from tests.servers import REPO, TIMING, free_port, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "artifacts" / "browser"
WAIT_MS = int(10_000 * TIMING)


class Demo(str):
    """The demo's base URL, knowing the pid of its run_demo.py process."""

    pid: int
    #: Where the websocket vassal's worker serves its metrics and health (loopback).
    metrics_port: int


@pytest.fixture(scope="module", params=["nginx", "direct"])
def demo(request, tmp_path_factory) -> Iterator[Demo]:
    """The demo as `make demo` runs it, behind nginx (where installed) and with no proxy (the vassals' own ports)."""
    if request.param == "nginx" and shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); .ci/run installs it; the direct entry runs")
    yield from run_demo(tmp_path_factory, DEMO_ENTRY=request.param)


def run_demo(tmp_path_factory, *args: str, **extra: str) -> Iterator[Demo]:
    port = free_port()
    ws_port = free_port()
    run = tmp_path_factory.mktemp("demo-run")
    env = {k: v for k, v in os.environ.items() if k not in ("WS4REDIS_CONNECTION", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(DEMO_HTTP_PORT=str(port), DEMO_WS_PORT=str(ws_port), DEMO_RUN=str(run), DEMO_METRICS_PORT=str(free_port()))
    env.update(extra)
    log = open(run / "run_demo.out", "wb")
    command = [sys.executable, str(REPO / "deploy" / "run_demo.py"), *args]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"The demo is at" in (run / "run_demo.out").read_bytes() or proc.poll() is not None, 90, "the demo")
        assert proc.poll() is None, (run / "run_demo.out").read_text()
        url = Demo(f"http://127.0.0.1:{port}")
        url.pid = proc.pid
        url.metrics_port = int(env["DEMO_METRICS_PORT"])
        yield url
    finally:
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))] if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
        # Stopping the demo stops everything it started: emperor, vassals, nginx, Redis.
        wait_for(
            lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in tree),
            30,
            "every demo process to exit",
        )


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


def logged_in_page(browser, base: str, username: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "demo")
    page.click("#login")
    page.wait_for_selector(f"#username:text('{username}')", timeout=WAIT_MS)
    return page


def open_chat(page, base: str, path: str) -> None:
    page.goto(f"{base}{path}")
    page.wait_for_selector("#status.connected", timeout=WAIT_MS)


def say(page, text: str, target: str | None = None) -> None:
    if target is not None:
        page.select_option("#target", target)
    page.fill("#text", text)
    page.click("#send")


def expect_message(page, text: str) -> None:
    page.locator("#messages li").get_by_text(text, exact=True).wait_for(timeout=WAIT_MS)


def messages(page) -> list[str]:
    return page.locator("#messages li").all_text_contents()


@pytest.fixture(scope="module")
def demo_runserver(tmp_path_factory) -> Iterator[Demo]:
    """The demo under `manage.py runserver` (`make demo-runserver`)."""
    yield from run_demo(tmp_path_factory, "--runserver")


def test_the_demo_under_runserver_chats(demo_runserver, browser):
    john, mary = (logged_in_page(browser, demo_runserver, name) for name in ("john", "mary"))
    for page in (john, mary):
        open_chat(page, demo_runserver, "/broadcast/")
    say(john, "from the development server")
    expect_message(mary, "john: from the development server")
    for page in (john, mary):
        open_chat(page, demo_runserver, "/userchat/")
    say(mary, "in private", target="john")
    expect_message(john, "mary → john: in private")


def test_john_and_mary_chat_in_every_audience(demo, browser):
    john, mary, erin = (logged_in_page(browser, demo, name) for name in ("john", "mary", "erin"))

    for page in (john, mary):
        open_chat(page, demo, "/broadcast/")
    say(john, "hello everybody")
    expect_message(mary, "john: hello everybody")
    say(mary, "hi john")
    expect_message(john, "mary: hi john")
    expect_message(john, "john: hello everybody")  # echo: the sender sees its own message

    for page in (john, mary, erin):
        open_chat(page, demo, "/userchat/")
    say(john, "a word in private", target="mary")
    expect_message(mary, "john → mary: a word in private")
    expect_message(john, "john → mary: a word in private")

    for page in (john, mary, erin):
        open_chat(page, demo, "/groupchat/")
    say(mary, "soup at noon", target="cooks")
    expect_message(john, "mary @ cooks: soup at noon")
    say(mary, "meeting at one", target="staff")
    expect_message(erin, "mary @ staff: meeting at one")
    expect_message(mary, "mary @ staff: meeting at one")
    assert "mary @ staff: meeting at one" not in messages(john)
    assert "john → mary: a word in private" not in messages(erin)

    second_tab = john.context.new_page()
    for page in (john, second_tab, mary):
        open_chat(page, demo, "/session/")
    say(john, "between my tabs")
    expect_message(second_tab, "between my tabs")
    say(mary, "mary's own session")
    expect_message(mary, "mary's own session")
    assert "mary's own session" not in messages(second_tab)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    open_chat(john, demo, "/broadcast/")
    open_chat(mary, demo, "/broadcast/")
    say(john, "screenshot time")
    expect_message(mary, "john: screenshot time")
    mary.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
    assert (ARTIFACTS / "chat.png").stat().st_size > 1000


def test_a_view_publishes_into_the_page(demo, browser):
    john, mary = logged_in_page(browser, demo, "john"), logged_in_page(browser, demo, "mary")
    for page in (john, mary):
        open_chat(page, demo, "/counter/")
    before = int(mary.text_content("#counter"))
    john.click("#click")
    mary.wait_for_selector(f"#counter:text-is('{before + 1}')", timeout=WAIT_MS)
    john.wait_for_selector("#bell-count:text-is('1')", timeout=WAIT_MS)  # the view notified john only
    assert mary.text_content("#bell-count") == "0"


def test_the_websocket_vassal_serves_metrics_and_health_on_loopback_only(demo, browser):
    """After the chats above: the worker's figures count that traffic; nginx does not serve them."""
    from prometheus_client.parser import text_string_to_metric_families

    john = logged_in_page(browser, demo, "john")
    open_chat(john, demo, "/broadcast/")
    say(john, "counted")
    expect_message(john, "john: counted")
    with urllib.request.urlopen(f"http://127.0.0.1:{demo.metrics_port}/health", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{demo.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    figures = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert figures["ws4redis_handshakes_total", (("outcome", "accepted"),)] >= 10  # the pages of the chats above
    assert figures["ws4redis_client_messages_total", ()] >= 4  # what the broadcast pages published
    assert figures["ws4redis_deliveries_total", (("path", "fast"),)] >= 4
    assert figures["ws4redis_redis_subscribed", ()] == 1
    assert sum(v for (name, _), v in figures.items() if name == "ws4redis_websockets_open") >= 1  # john's page
    for path in ("/metrics", "/health", "/ws/metrics"):
        try:
            with urllib.request.urlopen(f"{demo}{path}", timeout=5) as response:
                assert b"ws4redis_" not in response.read()
        except urllib.error.HTTPError:
            pass  # refused: as good


def websocket_vassal_pids(demo: Demo) -> list[int]:
    """The websocket vassal's master and worker, among the demo's processes."""
    pids = []
    for proc in psutil.Process(demo.pid).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "websocket.ini" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return pids


def test_page_reconnects_after_the_websocket_vassal_restarts_and_misses_nothing(demo, browser):
    john, mary = logged_in_page(browser, demo, "john"), logged_in_page(browser, demo, "mary")
    for page in (john, mary):
        open_chat(page, demo, "/userchat/")
    say(john, "before the crash", target="mary")
    expect_message(mary, "john → mary: before the crash")
    old = set(websocket_vassal_pids(demo))
    assert old
    for pid in old:
        os.kill(pid, signal.SIGKILL)  # a crash; the emperor brings the vassal back
    mary.wait_for_selector("#status.disconnected", timeout=WAIT_MS)
    # Published by a Django view while mary's websocket is down: she must still get both
    # (a persisted message would only bring back the last one; history brings back all).
    say(john, "while you were away", target="mary")
    say(john, "and this too", target="mary")
    wait_for(lambda: set(websocket_vassal_pids(demo)) - old, 30, "the emperor to respawn the websocket vassal")
    for page in (john, mary):
        page.wait_for_selector("#status.connected", timeout=4 * WAIT_MS)
    expect_message(mary, "john → mary: while you were away")
    expect_message(mary, "john → mary: and this too")
    say(john, "after the restart", target="mary")
    expect_message(mary, "john → mary: after the restart")
    seen = messages(mary)  # the page may start with an earlier, persisted message
    assert seen[seen.index("john → mary: before the crash") :] == [
        "john → mary: before the crash",
        "john → mary: while you were away",
        "john → mary: and this too",
        "john → mary: after the restart",
    ]
