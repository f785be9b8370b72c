"""A page change of a logged-in user: the next page's websocket finds its channels still subscribed.

A worker keeps a channel subscribed ``WS4REDIS_CHANNEL_LINGER`` seconds after
its last websocket closed (the test site turns that off for the other tests,
which read Redis's NUMSUB). Seen from outside: Redis gets no SUBSCRIBE and no
read of stored messages for the next page, the user's messages still arrive,
a message stored meanwhile is the one the next page gets, and the
subscription goes once the seconds ran out.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv
from tests.integration.test_live_auth import login, new_user, subscribers
from tests.servers import TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi.core.channels import Audience, channel_name
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LINGER = 3.0 * TIMING


@pytest.fixture
def lingering_worker(redis_server, site_db, tmp_path):
    server = UwsgiServer(
        {**SITE_ENV, "WS4REDIS_TEST_CHANNEL_LINGER": str(LINGER)}, cores=100, log_path=tmp_path / "uwsgi.log"
    ).start()
    yield server
    server.stop()


def calls(probe: redis.Redis, command: str) -> int:
    return int(probe.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_next_page_subscribes_nothing_and_reads_nothing_until_the_linger_ran_out(lingering_worker, redis_server):
    probe = redis.Redis.from_url(redis_server.url)
    fac, user = facility(), new_user()
    cookie, _ = login(user)
    path = f"/ws/{fac}?subscribe-user"
    user_channel = channel_name("test", Audience.USER, fac, user.username)
    publisher = RedisPublisher(facility=fac, users=[user.username])
    with client(lingering_worker, path, cookie):  # the first page
        assert subscribers(user_channel) == 1
        closing = time.monotonic()  # the server lets go of it after this (the client's close returns later)
    probe.config_resetstat()
    with client(lingering_worker, path, cookie) as page:  # the next one, a moment later
        assert time.monotonic() - closing < LINGER, "too slow to come back within the linger"
        assert calls(probe, "subscribe") == 0 and calls(probe, "mget") == 0
        publisher.publish_message("to the next page", expire=0)
        assert recv(page) == "to the next page"
    # Stored while no websocket of the user is open, the channel kept: the next page gets it.
    publisher.publish_message("stored meanwhile", expire=60)
    with client(lingering_worker, path, cookie) as page:
        assert recv(page) == "stored meanwhile"
        closing = time.monotonic()
    assert subscribers(user_channel) == 1
    wait_for(lambda: subscribers(user_channel) == 0, LINGER / TIMING + 5, "the subscription to go after the linger")
    assert time.monotonic() - closing >= LINGER
