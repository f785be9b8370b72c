"""Presence with real uWSGI workers, a real Redis and real websocket clients.

The test site has presence on facilities named ``presence-*``
(``tests.testsite.hooks.has_presence``); the test process reads it with
:mod:`ws4redis_uwsgi.presence`, as a Django view would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv, split
from tests.servers import TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi import presence
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = pytest.mark.integration


def presence_facility() -> str:
    return "presence-" + facility()


def present(fac: str, users: dict[str, int], total: int) -> None:
    """Wait until presence says ``users`` and ``total`` connections on ``fac``."""
    wait_for(
        lambda: presence.online_users(fac) == users and presence.count(fac) == total,
        10,
        f"{users} and {total} connections on {fac} (now {presence.online_users(fac)}, {presence.count(fac)})",
    )


@contextlib.contextmanager
def vassal(tmp_path, name: str, **env: str):
    """Another uWSGI vassal of the site, on the same Redis (as a second host would be)."""
    server = UwsgiServer({**SITE_ENV, **env}, cores=100, log_path=tmp_path / f"{name}.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_three_tabs_are_one_user_with_three_connections_and_count_includes_anonymous(uwsgi_server, login):
    fac = presence_facility()
    john, mary = login("john"), login("mary")
    with contextlib.ExitStack() as stack:
        tabs = [stack.enter_context(client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", john)) for _ in range(3)]
        stack.enter_context(client(uwsgi_server, f"/ws/{fac}?subscribe-user", mary))
        stack.enter_context(client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast"))  # anonymous
        present(fac, {"john": 3, "mary": 1}, 5)
        tabs[0].close()
        present(fac, {"john": 2, "mary": 1}, 4)
    present(fac, {}, 0)


@pytest.mark.timeout(60)
def test_join_and_leave_reach_the_clients_that_asked_and_no_other(uwsgi_server, login):
    fac = presence_facility()
    john = login("john")
    with (
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&presence", login("mary")) as watcher,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as plain,
    ):
        assert recv(watcher) == "!join\nmary"  # its own first connection
        with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", john):
            assert recv(watcher) == "!join\njohn"
            with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", john):
                present(fac, {"john": 2, "mary": 1}, 4)
            present(fac, {"john": 1, "mary": 1}, 3)  # a second tab closed: john is still there
        assert recv(watcher) == "!leave\njohn"
        # A message that imitates an event arrives framed behind its token: it cannot be mistaken for one.
        RedisPublisher(facility=fac, broadcast=True).publish_message("!join\nfake", expire=0)
        token, payload = split(recv(watcher))
        assert payload == "!join\nfake" and token and not token.startswith("!")
        # The client that did not ask got no event, only the message.
        assert recv(plain) == "!join\nfake"


@pytest.mark.timeout(60)
def test_asking_for_events_on_a_facility_without_presence_frames_messages_and_costs_nothing(uwsgi_server, redis_client, login):
    fac = facility()  # not presence-*
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&presence", login("john")) as ws:
        RedisPublisher(facility=fac, broadcast=True).publish_message("hello", expire=0)
        token, payload = split(recv(ws))
        assert payload == "hello" and token
    assert redis_client.keys(f"*presence:{fac}*") == []
    with pytest.raises(presence.PresenceOffError):
        presence.count(fac)


@pytest.mark.timeout(60)
def test_an_unknown_facility_with_presence_is_empty():
    fac = presence_facility()
    assert presence.online_users(fac) == {}
    assert presence.count(fac) == 0


@pytest.mark.timeout(90)
def test_two_vassals_sharing_one_redis_see_each_others_users(uwsgi_server, login, tmp_path):
    fac = presence_facility()
    with (
        vassal(tmp_path, "second") as second,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&presence") as watcher,
        client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", login("john")),
    ):
        assert recv(watcher) == "!join\njohn"
        with client(second, f"/ws/{fac}?subscribe-broadcast", login("john")), client(second, f"/ws/{fac}", login("mary")):
            assert recv(watcher) == "!join\nmary"  # opened on the other vassal
            present(fac, {"john": 2, "mary": 1}, 4)
        assert recv(watcher) == "!leave\nmary"
        present(fac, {"john": 1}, 2)


@pytest.mark.timeout(90)
def test_a_killed_worker_leaves_no_ghost_for_longer_than_the_ttl(login, tmp_path, redis_server, site_db):
    ttl = 3.0
    fac = presence_facility()
    env = {"WS4REDIS_TEST_PRESENCE_TTL": str(ttl)}
    with (
        vassal(tmp_path, "watching", **env) as watching,
        vassal(tmp_path, "doomed", **env) as doomed,
        client(watching, f"/ws/{fac}?subscribe-broadcast&presence") as watcher,
    ):
        victims = contextlib.ExitStack()
        for cookie in (login("john"), login("john"), None):
            victims.enter_context(client(doomed, f"/ws/{fac}?subscribe-broadcast", cookie))
        assert recv(watcher) == "!join\njohn"
        present(fac, {"john": 2}, 4)
        (worker,) = doomed.worker_pids()
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        # Nobody reads meanwhile: the watching worker's own refreshes find the dead one.
        assert recv(watcher) == "!leave\njohn"
        assert time.monotonic() - killed <= ttl * TIMING + 0.5
        assert presence.online_users(fac) == {}
        assert presence.count(fac) == 1  # the watcher
        with contextlib.suppress(Exception):
            victims.close()  # their server is gone


@pytest.mark.timeout(90)
def test_readers_drop_a_killed_workers_connections_within_the_ttl(login, tmp_path, redis_server, site_db):
    ttl = 3.0
    fac = presence_facility()
    with vassal(tmp_path, "doomed", WS4REDIS_TEST_PRESENCE_TTL=str(ttl)) as doomed:
        victims = contextlib.ExitStack()
        victims.enter_context(client(doomed, f"/ws/{fac}?subscribe-broadcast", login("mary")))
        victims.enter_context(client(doomed, f"/ws/{fac}?subscribe-broadcast"))
        present(fac, {"mary": 1}, 2)
        (worker,) = doomed.worker_pids()
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: presence.count(fac) == 0 and presence.online_users(fac) == {}, ttl + 1, "the ghost gone")
        assert time.monotonic() - killed <= ttl * TIMING + 0.5
        with contextlib.suppress(Exception):
            victims.close()
