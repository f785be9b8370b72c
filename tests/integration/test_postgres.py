"""What only a database server shows: handshakes that wait for it, connections it drops.

The worker's database greenlets (server/db_workers.py) keep their PostgreSQL
connections between handshakes and wait for answers through gevent
(psycopg sees the monkey-patching), so a handshake held up by a lock must
not hold up the rest of the worker, and a connection the server dropped
(restart, failover, idle timeout) must cost one retry, not a refused socket.
The handshake tests that run on both databases are in test_websocket.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.integration.helpers import client, facility, recv
from tests.integration.test_live_auth import another_worker
from tests.postgres import DATABASE, ROLE
from tests.servers import wait_for
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True),
]

__all__ = ["another_worker"]  # a fixture of the live authorization tests, used here


def worker_connections(admin, state: str | None = None) -> int:
    """The test role's sessions other than the test process's own (closed beforehand), in ``state`` if given."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s"
    params = [DATABASE, ROLE]
    if state is not None:
        query += " AND wait_event_type = %s"
        params.append(state)
    return int(admin.execute(query, params).fetchone()[0])


@contextmanager
def sessions_locked(postgres_server) -> Iterator:
    """The sessions' table locked by another connection until the block ends; yields a connection to look with."""
    with postgres_server.connect() as admin, postgres_server.connect() as locker:
        with locker.transaction():
            locker.execute("LOCK TABLE django_session IN ACCESS EXCLUSIVE MODE")
            yield admin


def browser(server, path: str, cookie: str, received: list) -> threading.Thread:
    """A browser opening a websocket, in a thread of its own: its first message, or what went wrong, goes to ``received``."""

    def run() -> None:
        try:
            with client(server, path, cookie) as ws:
                received.append(recv(ws))
        except BaseException as exc:
            received.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_handshake_waiting_for_a_lock_leaves_the_worker_serving(site_server, login, postgres_server):
    from django.db import connection

    fac = facility()
    RedisPublisher(facility=fac, users=["john"]).publish_message("for john", expire=30)
    cookie = login("john")
    connection.close()
    received: list[str | bytes | BaseException] = []
    with sessions_locked(postgres_server) as admin:
        john = browser(site_server, f"/ws/{fac}?subscribe-user", cookie, received)
        wait_for(lambda: worker_connections(admin, "Lock") == 1, 10, "the session lookup to wait for the lock")
        # Meanwhile the worker serves others: an anonymous visitor reads no row.
        with client(site_server, f"/ws/{fac}?subscribe-broadcast") as visitor:
            RedisPublisher(facility=fac, broadcast=True).publish_message("still serving", expire=0)
            assert recv(visitor) == "still serving"
        assert not received and worker_connections(admin, "Lock") == 1
    john.join(10)
    assert received == ["for john"]


def test_connections_the_server_dropped_cost_a_retry_not_a_handshake(site_server, login, postgres_server):
    from django.db import connection

    fac = facility()
    RedisPublisher(facility=fac, users=["john"]).publish_message("for john", expire=30)
    cookies = [login("john") for _ in range(4)]
    connection.close()

    def all_logged_in() -> None:
        for cookie in cookies:
            with client(site_server, f"/ws/{fac}?subscribe-user", cookie) as ws:
                assert recv(ws) == "for john"

    all_logged_in()
    with postgres_server.connect() as admin:
        assert worker_connections(admin) >= 1  # kept between handshakes
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND usename = %s", [DATABASE, ROLE]
        )
        wait_for(lambda: worker_connections(admin) == 0, 10, "the worker's connections to be gone")
    all_logged_in()
    all_logged_in()


def test_a_pages_claim_lets_its_websocket_in_while_every_database_greenlet_waits_for_a_lock(another_worker, postgres_server):
    """On the stock set-up a handshake let in on its page's claim needs no database greenlet: slow reads hold up reads only."""
    from django.db import connection

    from tests.integration.test_identity_claim import hearing, page
    from tests.integration.test_live_auth import new_user
    from ws4redis_uwsgi.server.db_workers import POOL_SIZE

    worker = another_worker(WS4REDIS_TEST_STOCK="1")
    fac = facility()
    hearing(worker)
    claimed = new_user()
    with_claim, _, _ = page(claimed)
    readers = [page(new_user())[1] for _ in range(POOL_SIZE)]  # session cookies alone: these handshakes read
    connection.close()
    received: list[str | bytes | BaseException] = []
    with sessions_locked(postgres_server) as admin:
        path = f"/ws/{fac}?subscribe-broadcast&subscribe-user"
        threads = [browser(worker, path, cookie, received) for cookie in readers]
        wait_for(lambda: worker_connections(admin, "Lock") == POOL_SIZE, 10, "every database greenlet to wait for the lock")
        with client(worker, f"/ws/{fac}?subscribe-user", with_claim) as ws:
            RedisPublisher(facility=fac, users=[claimed.username]).publish_message("for the page", expire=0)
            assert recv(ws) == "for the page"
        assert not received and worker_connections(admin, "Lock") == POOL_SIZE  # the readers still wait
        RedisPublisher(facility=fac, broadcast=True).publish_message("for everyone", expire=30)
    for thread in threads:
        thread.join(10)
    assert received == ["for everyone"] * POOL_SIZE
