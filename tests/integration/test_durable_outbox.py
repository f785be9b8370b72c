"""The durable outbox: written in the transaction, published after the commit, nothing lost after a crash, seen once.

Each runs with the site on SQLite and on PostgreSQL (``db_backend``): SQLite
has no row locks, so its drains take turns by a Redis lock; PostgreSQL's
skip the rows another drain locked. The crash is real: a Django process
killed between its commit and its publish, the row it left published by the
drain of a real uWSGI websocket worker (and by ``manage.py ws4redis
drain-outbox``), received once by a real websocket client.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, left_in_outbox, recv
from tests.servers import REPO, TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi.bus import durable
from ws4redis_uwsgi.bus.connection import get_client
from ws4redis_uwsgi.core import envelope
from ws4redis_uwsgi.models import OutboxMessage
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

#: Seconds a row waits for its publisher before the test workers' drain takes it.
GRACE = 3 * TIMING

#: A Django process that commits a durable publish and is killed before it publishes: the kill
#: is registered first, so it runs first after the commit (no hook of the package's for tests).
CRASH = """
import os, signal, sys
import django
django.setup()
from django.db import transaction
from ws4redis_uwsgi.publisher import RedisPublisher
facility, text = sys.argv[1:]
with transaction.atomic():
    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    RedisPublisher(facility=facility, broadcast=True).publish_message(text, durable=True)
"""


def publisher(fac: str) -> RedisPublisher:
    return RedisPublisher(facility=fac, broadcast=True)


def rows(fac: str) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(facility=fac))


def channel(fac: str) -> str:
    return f"test:broadcast:{fac}"


@pytest.fixture
def site_env(db_backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a process of the test site on the test's database."""
    where = SITE_ENV["WS4REDIS_TEST_DB"] if db_backend == "sqlite" else request.getfixturevalue("postgres_site_db")
    return {**SITE_ENV, "WS4REDIS_TEST_DB": where}


@pytest.fixture
def draining_server(site_env: dict[str, str], redis_server, tmp_path) -> Iterator[UwsgiServer]:
    """A uWSGI websocket worker of the site whose outbox drain runs every 0.3 s, after a grace of GRACE."""
    env = {**site_env, "WS4REDIS_TEST_OUTBOX_DRAIN": "0.3", "WS4REDIS_TEST_OUTBOX_GRACE": str(GRACE)}
    server = UwsgiServer(env, cores=50, log_path=tmp_path / "uwsgi.log").start()
    yield server
    server.stop()


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "tests/testsite/manage.py"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60 * TIMING,
    )


# -- publishing through the outbox ----------------------------------------------------------


def test_inside_a_transaction_the_row_is_written_and_after_the_commit_published_once_and_deleted(site_server, redis_client):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with transaction.atomic():
            assert publisher(fac).publish_message("durable", durable=True) is None
            (row,) = rows(fac)  # in the transaction, with the view's own writes
            # Published at once, it overtakes the durable one: that did not go out yet.
            assert publisher(fac).publish_message("during", expire=0) == 1
            assert recv(ws) == "during"
        assert recv(ws) == "durable"
        assert rows(fac) == []
        # Every copy carries the row's uid, here the one persisted on the channel.
        assert envelope.decode(redis_client.get(channel(fac))).uid == row.uid
        assert envelope.is_durable_uid(row.uid)
        publisher(fac).publish_message("next", expire=0)
        assert recv(ws) == "next"  # nothing came twice


def test_after_a_rollback_nothing_goes_out_and_no_row_is_left(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with pytest.raises(RuntimeError), transaction.atomic():
            publisher(fac).publish_message("rolled back", durable=True)
            raise RuntimeError("the view failed")
        with transaction.atomic():
            with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint, rolled back
                publisher(fac).publish_message("in a savepoint rolled back", durable=True)
                raise RuntimeError("this part failed")
            publisher(fac).publish_message("kept", durable=True)
        assert recv(ws) == "kept"
        assert rows(fac) == []
        assert durable.drain("default", 0) == 0
        publisher(fac).publish_message("next", expire=0)
        assert recv(ws) == "next"


def test_outside_a_transaction_it_goes_out_at_once_and_leaves_no_row(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        assert publisher(fac).publish_message("at once", durable=True) == 1
        assert rows(fac) == []
        assert recv(ws) == "at once"


def test_the_setting_makes_publishes_durable_unless_on_commit_is_false(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws, override_settings(WS4REDIS_DURABLE_OUTBOX=True):
        with transaction.atomic():
            assert publisher(fac).publish_message("durable") is None
            assert len(rows(fac)) == 1
            assert publisher(fac).publish_message("at once", on_commit=False) == 1
            assert publisher(fac).publish_message("after the commit", durable=False, on_commit=True) is None
            assert len(rows(fac)) == 1
            assert recv(ws) == "at once"
        assert [recv(ws) for _ in range(2)] == ["durable", "after the commit"]
        assert rows(fac) == []


def test_bad_combinations_raise_in_the_view_and_write_nothing(site_server):
    fac = facility()
    with transaction.atomic():
        with pytest.raises(ValueError, match="on_commit=False"):
            publisher(fac).publish_message("x", durable=True, on_commit=False)
        with pytest.raises(ValueError, match="WS4REDIS_OUTBOX_DATABASES"):
            publisher(fac).publish_message("x", durable=True, using="other")
        with pytest.raises(TypeError):
            publisher(fac).publish_message(42, durable=True)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="facility"):
            RedisPublisher().publish_message("x", durable=True)
        assert rows(fac) == []


def test_audiences_are_kept_with_self_resolved(db_backend, redis_server):
    from django.contrib.auth.models import User
    from django.test import RequestFactory

    from ws4redis_uwsgi.bus.store import SELF

    fac = facility()
    request = RequestFactory().get("/")
    request.user = User.objects.get(username="john")
    with transaction.atomic():
        RedisPublisher(facility=fac, users=[SELF, "mary"], groups=["staff"], request=request).publish_message(
            b"\xff", binary=True, expire=7, durable=True
        )
        (row,) = rows(fac)
        transaction.set_rollback(True)
    assert row.audiences == {"broadcast": False, "users": ["john", "mary"], "groups": ["staff"], "sessions": []}
    assert (bytes(row.message), row.binary, row.expire) == (b"\xff", True, 7)


# -- Redis away, drains -------------------------------------------------------------------


def test_redis_away_after_the_commit_leaves_the_row_for_a_drain_which_publishes_it_once(site_server, caplog):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with override_settings(WS4REDIS_CONNECTION="redis://127.0.0.1:1/0"), caplog.at_level(logging.WARNING):
            with transaction.atomic():
                publisher(fac).publish_message("kept for later", durable=True)
            assert publisher(fac).publish_message("kept too", durable=True) is None  # outside: no exception either
        assert any("stays in the outbox" in r.getMessage() for r in caplog.records)
        assert len(rows(fac)) == 2
        assert durable.drain("default") == 0  # younger than the grace: left to their publisher
        assert durable.drain("default", 0) >= 2
        assert [recv(ws) for _ in range(2)] == ["kept for later", "kept too"]
        assert rows(fac) == []


def test_a_copy_published_again_reaches_a_client_once_with_history_on_or_off(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        for history in (None, {"WS4REDIS_HISTORY_LENGTH": 0, "WS4REDIS_HISTORY_SECONDS": 0}):
            with override_settings(**(history or {})):
                with transaction.atomic():
                    publisher(fac).publish_message(f"once, history {'off' if history else 'on'}", durable=True)
                    (row,) = rows(fac)
                assert recv(ws) == f"once, history {'off' if history else 'on'}"
                # What a drain does when a row stayed after its publish (its delete failed, a crash):
                # the same uid again, under another id (history on) or with none (history off).
                assert durable.publish_row(row, get_client()) == 1
        publisher(fac).publish_message("next", expire=0)
        assert recv(ws) == "next"


def test_a_drain_skips_rows_another_drain_holds(db_backend, redis_server):
    fac = facility()
    left_in_outbox(fac, b"held")
    if connection.features.has_select_for_update_skip_locked:
        # Another drain's transaction holds the rows (PostgreSQL): this one skips them.
        taken, release = threading.Event(), threading.Event()

        def other_drain() -> None:
            from django.db import connections

            try:
                with transaction.atomic():
                    list(OutboxMessage.objects.select_for_update().filter(facility=fac))
                    taken.set()
                    release.wait(30)
            finally:
                connections.close_all()

        holder = threading.Thread(target=other_drain)
        holder.start()
        try:
            assert taken.wait(10)
            assert durable.drain("default", 0) == 0
        finally:
            release.set()
            holder.join()
    else:
        # Without row locks (SQLite) one drain at a time holds the database's Redis lock.
        client_ = get_client()
        key = "test:ws4redis:outbox-drain:default"
        assert client_.set(key, "other drain", nx=True, ex=30)
        try:
            assert durable.drain("default", 0) == 0
        finally:
            client_.delete(key)
    assert durable.drain("default", 0) >= 1
    assert rows(fac) == []


# -- a crash between commit and publish ---------------------------------------------------


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
def test_a_row_a_killed_process_left_is_published_by_the_worker_drain_and_the_command_once(
    draining_server, site_env, redis_client
):
    fac = facility()
    bus = redis_client.pubsub()
    bus.subscribe(channel(fac))
    with client(draining_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        crashed = subprocess.run([sys.executable, "-c", CRASH, fac, "left behind"], env=site_env, cwd=REPO, timeout=60 * TIMING)
        assert crashed.returncode == -9  # SIGKILL, right after the commit
        (row,) = rows(fac)  # committed, not published: the grace keeps the drain off it for now
        assert ws.recv(timeout=10 * GRACE) == "left behind"
        drained = "published 1 message(s) a publisher left in the outbox of database 'default'"
        wait_for(lambda: drained in draining_server.log_text(), 10, "the worker's drain to log it")
        wait_for(lambda: rows(fac) == [], 10, "the drain to delete the row")
        # As if a drain had published it and died before deleting it: the row again, young,
        # so that the command (without grace) takes it before the worker's drain does.
        copy = OutboxMessage.objects.create(
            uid=row.uid,
            created=timezone.now(),
            facility=row.facility,
            audiences=row.audiences,
            message=row.message,
            binary=row.binary,
            expire=row.expire,
        )
        first = manage(site_env, "ws4redis", "drain-outbox", "--older-than", "0")
        second = manage(site_env, "ws4redis", "drain-outbox", "--older-than", "0")
        assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
        assert (first.stdout, second.stdout) == (
            "default: published 1 message(s) from the outbox\n",
            "default: published 0 message(s) from the outbox\n",
        )
        assert not OutboxMessage.objects.filter(pk=copy.pk).exists()
        publisher(fac).publish_message("next", expire=0)
        assert recv(ws) == "next"  # the command's copy was dropped: the client has it once
    # On the bus it went twice, under its one uid.
    copies: list[envelope.BusMessage] = []

    def read_bus() -> bool:
        message = bus.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            copies.append(envelope.decode(message["data"]))
        return len(copies) >= 3

    wait_for(read_bus, 10, "three messages on the bus")
    assert bus.get_message(timeout=0.5) is None
    bus.close()
    assert [(m.payload, m.uid) for m in copies] == [(b"left behind", row.uid)] * 2 + [(b"next", None)]


def test_the_worker_drains_without_any_websocket(draining_server, redis_client):
    fac = facility()
    bus = redis_client.pubsub()
    bus.subscribe(channel(fac))
    bus.get_message(timeout=1)  # the subscription's confirmation
    left_in_outbox(fac, b"no websocket came")
    message = wait_for(lambda: bus.get_message(timeout=0.5), 20, "the drain to publish")
    bus.close()
    assert envelope.decode(message["data"]).payload == b"no websocket came"  # type: ignore[index]
    wait_for(lambda: rows(fac) == [], 10, "the drain to delete the row")


# -- the command ----------------------------------------------------------------------------


def test_the_command_refuses_bad_arguments_with_status_2_and_an_unreachable_redis_with_status_1(site_env):
    for args in (["ws4redis"], ["ws4redis", "nope"], ["ws4redis", "drain-outbox", "--older-than", "-1"]):
        done = manage(site_env, *args)
        assert done.returncode == 2, done
        assert "usage:" in done.stderr
    done = manage(site_env, "ws4redis", "drain-outbox", "--database", "nowhere")
    assert (done.returncode, done.stderr.strip()) == (2, "CommandError: unknown database 'nowhere' (not in DATABASES)")
    done = manage({**site_env, "WS4REDIS_TEST_REDIS": "redis://127.0.0.1:1/0"}, "ws4redis", "drain-outbox")
    assert done.returncode == 1
    assert done.stderr.startswith("CommandError: Redis cannot be reached: ")
