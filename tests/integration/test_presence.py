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
import redis

from tests.conftest import SITE_ENV
from tests.integration.failover import worker_on
from tests.integration.helpers import client, facility, recv, split
from tests.servers import TIMING, UwsgiServer, wait_for
from tests.topologies import ClusterSet, SentinelSet
from ws4redis_uwsgi import presence
from ws4redis_uwsgi.bus import presence as bus
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.core.presence import LocalPresence, PresenceKeys
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
def test_a_worker_that_reloads_takes_its_connections_away_at_once(login, tmp_path, redis_server, site_db):
    """A graceful reload (SIGHUP: a deploy) closes the websockets with 1012 and says so to Redis before the worker exits."""
    fac = presence_facility()
    with vassal(tmp_path, "reloading", WS4REDIS_TEST_PRESENCE_TTL="30") as reloading:
        old_workers = reloading.worker_pids()
        with contextlib.ExitStack() as sockets:
            for cookie in (login("john"), login("mary"), None):
                sockets.enter_context(client(reloading, f"/ws/{fac}?subscribe-broadcast", cookie))
            present(fac, {"john": 1, "mary": 1}, 3)
            reloading.proc.send_signal(signal.SIGHUP)
            reloaded = time.monotonic()
            wait_for(lambda: reloading.worker_pids() and reloading.worker_pids() != old_workers, 30, "the reload")
        present(fac, {}, 0)
        assert time.monotonic() - reloaded < 10 * TIMING  # not the 30 s of the TTL


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
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


# -- what it costs ------------------------------------------------------------------------------

#: Redis commands whose work grows with the users present (or the workers).
GROWING = {"hgetall", "hkeys", "hvals", "hscan", "keys", "scan", "zrange", "smembers"}


def commands_run(redis_client) -> dict[str, int]:
    """Commands Redis ran since the last CONFIG RESETSTAT, those of scripts included."""
    stats = redis_client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


@pytest.mark.timeout(120)
def test_with_100000_users_present_count_joins_and_leaves_do_constant_work(uwsgi_server, redis_client, login):
    fac = presence_facility()
    # 100,000 users on a worker of this test's own making, written as a worker writes its whole state.
    board = bus.PresenceBoard(redis.Redis.from_url(SITE_ENV["WS4REDIS_TEST_REDIS"]), None, prefix="test", sharded=False, ttl=600)
    local = LocalPresence()
    for n in range(100_000):
        local.add(f"user{n}")
    board._sync(fac, local)
    assert presence.count(fac) == 100_000
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", login("john")):
        present_count = 100_001
        wait_for(lambda: presence.count(fac) == present_count, 10, "john counted")
        redis_client.config_resetstat()
        assert presence.count(fac) == present_count
        assert not GROWING & set(commands_run(redis_client))
        with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast", login("mary")):  # a join on a worker already there
            wait_for(lambda: presence.count(fac) == present_count + 1, 10, "mary counted")
        wait_for(lambda: presence.count(fac) == present_count, 10, "mary gone")
        ran = commands_run(redis_client)
        assert not GROWING & set(ran), ran
        assert ran.get("publish", 0) >= 2  # her join and her leave
    assert len(presence.online_users(fac)) == 100_000
    keys = PresenceKeys.of("test", fac)
    redis_client.delete(keys.users, keys.total, keys.workers, keys.worker_totals, keys.worker(board.worker))


# -- Sentinel and Cluster -----------------------------------------------------------------------------


def _presence_on(server, login) -> None:
    fac = presence_facility()
    with client(server, f"/ws/{fac}?subscribe-broadcast&presence") as watcher:
        with client(server, f"/ws/{fac}?subscribe-broadcast", login("john")), client(server, f"/ws/{fac}", login("john")):
            assert recv(watcher) == "!join\njohn"
            present(fac, {"john": 2}, 3)
        assert recv(watcher) == "!leave\njohn"
        present(fac, {}, 1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_presence_through_sentinel(site_db, tmp_path, login):
    with SentinelSet() as sentinels, worker_on(sentinels.url, tmp_path) as server:
        _presence_on(server, login)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_presence_on_a_cluster_in_one_slot_per_facility_on_every_shard(site_db, tmp_path, login):
    with ClusterSet() as cluster, worker_on(cluster.url, tmp_path) as server:
        shards = set()
        while shards != set(cluster.masters()):
            fac_keys = PresenceKeys.of("test", presence_facility(), sharded=True)
            shards.add(cluster.master_for_slot(cluster.keyslot(fac_keys.users)))
        for _ in range(3):  # facilities land on any shard: events by SPUBLISH from the scripts
            _presence_on(server, login)


@pytest.mark.timeout(60)
def test_one_read_takes_back_every_dead_worker_however_many(redis_server, redis_client):
    fac = presence_facility()
    keys = PresenceKeys.of("test", fac)
    dead = bus.REAP_LIMIT + 50
    writer = redis.Redis.from_url(redis_server.url)
    for n in range(dead):  # workers that wrote their state and died at once
        board = bus.PresenceBoard(writer, None, prefix="test", sharded=False, ttl=1)
        local = LocalPresence()
        local.add(f"user{n % 7}")
        board._sync(fac, local)
    assert redis_client.zcard(keys.workers) == dead
    assert int(redis_client.get(keys.total)) == dead
    latest = max(score for _, score in redis_client.zrange(keys.workers, 0, -1, withscores=True))
    wait_for(lambda: _redis_ms(redis_client) > latest, 5, "every worker expired")
    assert presence.count(fac) == 0  # one call
    assert presence.online_users(fac) == {}
    assert redis_client.exists(keys.users, keys.total, keys.workers, keys.worker_totals) == 0  # nothing left behind


def _redis_ms(redis_client) -> int:
    seconds, microseconds = redis_client.time()
    return seconds * 1000 + microseconds // 1000


@pytest.mark.timeout(90)
def test_a_worker_whose_entries_redis_lost_writes_them_again(login, tmp_path, redis_server, redis_client, site_db):
    fac = presence_facility()
    keys = PresenceKeys.of("test", fac)
    with (
        vassal(tmp_path, "forgotten", WS4REDIS_TEST_PRESENCE_TTL="3") as server,
        client(server, f"/ws/{fac}?subscribe-broadcast", login("john")),
        client(server, f"/ws/{fac}?subscribe-broadcast"),
    ):
        present(fac, {"john": 1}, 2)
        worker_keys = redis_client.keys(keys.worker("*"))
        assert worker_keys
        # As a Redis restart without persistence would.
        assert redis_client.delete(keys.users, keys.total, keys.workers, keys.worker_totals, *worker_keys) == 5
        present(fac, {"john": 1}, 2)  # at the worker's next refresh


@pytest.mark.timeout(90)
def test_changes_while_redis_is_away_are_written_once_it_is_back(private_stack, login):
    redis_server, server = private_stack
    fac = presence_facility()
    with client(server, f"/ws/{fac}?subscribe-broadcast", login("mary")):
        with client(server, f"/ws/{fac}?subscribe-broadcast", login("john")):
            present(fac, {"john": 1, "mary": 1}, 2)
            redis_server.kill()
        # John left while Redis was away, and Redis comes back empty.
        redis_server.start()
        present(fac, {"mary": 1}, 1)
    present(fac, {}, 0)


@pytest.mark.timeout(60)
def test_a_logout_that_closes_a_users_websockets_sends_the_leave(uwsgi_server):
    from tests.integration.test_live_auth import closed_with, login, logout, new_user

    fac = presence_facility()
    user = new_user()
    cookie, key = login(user)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&presence") as watcher:
        with client(uwsgi_server, f"/ws/{fac}?subscribe-user", cookie) as tab:
            assert recv(watcher) == f"!join\n{user.username}"
            started = time.monotonic()
            logout(key, user)
            code, _ = closed_with(tab, started)
            assert code == CloseCode.SESSION_ENDED
        assert recv(watcher) == f"!leave\n{user.username}"
        present(fac, {}, 1)
