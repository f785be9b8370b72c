"""``await RedisPublisher(...).apublish_message(...)``: what a real uWSGI worker's websockets get, history and ids included.

Each test runs its async code with ``asyncio.run``, a loop of its own, as
Django does for an async view under WSGI. The views under uvicorn and
``runserver`` are in test_async_views.py.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.test import RequestFactory, override_settings

from tests.integration.helpers import client, facility, recv, split
from tests.servers import wait_for
from ws4redis_uwsgi.bus import async_client
from ws4redis_uwsgi.publisher import NotReplicatedError, RedisPublisher
from ws4redis_uwsgi.redis_store import SELF

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def apublish(message, expire=0, **kwargs):
    """Publish ``message`` from async code to the audiences of ``kwargs``; (receivers, the publisher)."""

    async def run():
        publisher = RedisPublisher(**kwargs)
        return await publisher.apublish_message(message, expire=expire), publisher

    return asyncio.run(run())


def session_key(cookie: str) -> str:
    return cookie.partition("=")[2]


def test_broadcast_reaches_every_subscriber_and_returns_the_receivers(uwsgi_server):
    fac = facility()
    path = f"/ws/{fac}?subscribe-broadcast"
    with client(uwsgi_server, path) as one, client(uwsgi_server, path) as two:
        receivers, _ = apublish("hello from async", facility=fac, broadcast=True)
        assert receivers == 1  # one worker process, however many websockets
        assert recv(one) == "hello from async"
        assert recv(two) == "hello from async"


def test_user_group_and_session_audiences(uwsgi_server, login):
    fac = facility()
    john, mary = login("john"), login("mary")
    query = f"/ws/{fac}?subscribe-user&subscribe-group&subscribe-session"
    with client(uwsgi_server, query, cookie=john) as ws_john, client(uwsgi_server, query, cookie=mary) as ws_mary:
        apublish("to john", facility=fac, users=["john"])
        assert recv(ws_john) == "to john"
        apublish("to staff", facility=fac, groups=["staff"])
        assert recv(ws_mary) == "to staff"
        apublish("to mary's session", facility=fac, sessions=[session_key(mary)])
        assert recv(ws_mary) == "to mary's session"
        apublish("to cooks", facility=fac, groups=["cooks"])
        # john got nothing meant for mary alone: the next thing he gets is the cooks' message.
        assert recv(ws_john) == "to cooks"
        assert recv(ws_mary) == "to cooks"


def test_self_is_resolved_through_djangos_async_apis(uwsgi_server, login):
    from django.contrib.auth.middleware import AuthenticationMiddleware
    from django.contrib.sessions.middleware import SessionMiddleware

    fac = facility()
    cookie = login("mary")
    request = RequestFactory().get("/", HTTP_COOKIE=cookie)
    SessionMiddleware(lambda r: None).process_request(request)
    AuthenticationMiddleware(lambda r: None).process_request(request)

    async def run():
        # Made in async code: SELF waits for apublish_message (request.user may not be read here).
        publisher = RedisPublisher(facility=fac, users=[SELF], groups=[SELF], sessions=[SELF], request=request)
        await publisher.apublish_message("to myself", expire=0)
        return sorted(publisher._publishers)

    query = f"/ws/{fac}?subscribe-user&subscribe-group&subscribe-session"
    with client(uwsgi_server, query, cookie=cookie) as ws:
        channels = asyncio.run(run())
        assert recv(ws) == "to myself"  # once, although on four of its channels
    key = session_key(cookie)
    assert channels == sorted(
        [f"test:user:mary:{fac}", f"test:group:cooks:{fac}", f"test:group:staff:{fac}", f"test:session:{key}:{fac}"]
    )


def test_binary_stays_binary_and_text_stays_text(uwsgi_server):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        apublish("text", facility=fac, broadcast=True)
        assert recv(ws) == "text"
        apublish(b"\xff\x00 not UTF-8", facility=fac, broadcast=True)
        assert recv(ws) == b"\xff\x00 not UTF-8"
        asyncio.run(RedisPublisher(facility=fac, broadcast=True).apublish_message("forced", expire=0, binary=True))
        assert recv(ws) == b"forced"


def test_expire_persists_the_message_for_the_next_subscriber(uwsgi_server, redis_client):
    fac = facility()
    apublish("kept for later", expire=30, facility=fac, broadcast=True)
    assert 0 < redis_client.ttl(f"test:broadcast:{fac}") <= 30
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        assert recv(ws) == "kept for later"
    apublish("not kept", expire=0, facility=fac, broadcast=True)  # expire=0 leaves the earlier one alone
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        assert recv(ws) == "kept for later"


def test_a_token_of_an_async_message_resumes_after_it(uwsgi_server):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        _, publisher = apublish("one", facility=fac, broadcast=True)
        token, payload = split(recv(ws))
        assert payload == "one" and token
        assert publisher.last_message_id is not None
    for text in ("two", "three"):
        apublish(text, facility=fac, broadcast=True)
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={token}") as ws:
        assert [split(recv(ws))[1] for _ in range(2)] == ["two", "three"]


def test_async_and_sync_publishes_interleaved_keep_one_id_order(uwsgi_server, redis_client):
    fac = facility()
    channel = f"test:broadcast:{fac}"
    sync_publisher = RedisPublisher(facility=fac, broadcast=True)
    texts = [f"m{i}" for i in range(20)]

    async def run():
        ids = []
        async_publisher = RedisPublisher(facility=fac, broadcast=True)
        for i, text in enumerate(texts):
            if i % 2:
                await async_publisher.apublish_message(text, expire=0)
                ids.append(async_publisher.last_message_id)
            else:
                sync_publisher.publish_message(text, expire=0)  # blocks this loop: fine in a test
                ids.append(sync_publisher.last_message_id)
        return ids

    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume=") as ws:
        ids = asyncio.run(run())
        frames = [split(recv(ws)) for _ in texts]
    assert [payload for _, payload in frames] == texts
    stored = [entry_id.decode() for entry_id, _ in redis_client.xrange(f"test:history:broadcast:{fac}")]
    assert stored == ids  # one stream, ids in publish order whoever published
    as_numbers = [tuple(map(int, i.split("-"))) for i in ids]
    assert as_numbers == sorted(as_numbers) and len(set(ids)) == len(ids)
    # A client resuming from the 5th message (published sync) gets the rest, async ones included, in order.
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast&resume={frames[4][0]}") as ws:
        assert [split(recv(ws))[1] for _ in texts[5:]] == texts[5:]
    assert redis_client.exists(channel) == 0  # expire=0: nothing persisted


def test_without_history_the_same_script(uwsgi_server, redis_client):
    fac = facility()
    with override_settings(WS4REDIS_HISTORY_LENGTH=0, WS4REDIS_HISTORY_SECONDS=0):
        with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
            receivers, publisher = apublish("no history", expire=20, facility=fac, broadcast=True)
            assert receivers == 1 and publisher.last_message_id is None
            assert recv(ws) == "no history"
    assert not redis_client.exists(f"test:history:broadcast:{fac}")
    assert redis_client.ttl(f"test:broadcast:{fac}") > 0


def test_too_few_replicas_raise_not_replicated(redis_server):
    fac = facility()
    with override_settings(WS4REDIS_WAIT_REPLICAS=1, WS4REDIS_WAIT_TIMEOUT=0.05):
        with pytest.raises(NotReplicatedError, match="0 of 1 replicas"):
            apublish("unacknowledged", facility=fac, broadcast=True)


def test_on_commit_and_the_durable_outbox_are_refused(redis_server):
    publisher = RedisPublisher(facility=facility(), broadcast=True)
    for kwargs in ({"on_commit": True}, {"durable": True}, {"durable": True, "on_commit": False}):
        with pytest.raises(ValueError, match="sync_to_async"):
            asyncio.run(publisher.apublish_message("x", **kwargs))
    with override_settings(WS4REDIS_DURABLE_OUTBOX=True):
        with pytest.raises(ValueError, match="WS4REDIS_DURABLE_OUTBOX"):
            asyncio.run(publisher.apublish_message("x"))
        assert asyncio.run(publisher.apublish_message("x", expire=0, durable=False)) == 0
    with override_settings(WS4REDIS_PUBLISH_ON_COMMIT=True):  # async code holds no transaction: at once
        assert asyncio.run(publisher.apublish_message("x", expire=0)) == 0


def test_one_client_per_loop_closed_with_its_loop(redis_server, redis_client):
    def publisher_connections() -> int:
        return sum(1 for c in redis_client.client_list() if c["name"] == "async-test")

    async def in_one_loop():
        first = await async_client.get_async_client()
        await RedisPublisher(facility=facility(), broadcast=True).apublish_message("x", expire=0)
        assert await async_client.get_async_client() is first
        assert publisher_connections() == 1
        return first

    with override_settings(WS4REDIS_CONNECTION={"host": "127.0.0.1", "port": redis_server.port, "client_name": "async-test"}):
        one = asyncio.run(in_one_loop())
        wait_for(lambda: publisher_connections() == 0, 5, "the loop's connection closed")
        two = asyncio.run(in_one_loop())
        assert two is not one
        wait_for(lambda: publisher_connections() == 0, 5, "the loop's connection closed")

        async def closed_on_demand():
            await RedisPublisher(facility=facility(), broadcast=True).apublish_message("x", expire=0)
            await async_client.aclose_clients()
            assert publisher_connections() == 0

        asyncio.run(closed_on_demand())


def test_redis_away_raises_a_connection_error(redis_server):
    with override_settings(WS4REDIS_CONNECTION="redis://127.0.0.1:1/0"), pytest.raises(redis.ConnectionError):
        apublish("nowhere", facility=facility(), broadcast=True)


def test_a_redis_that_forgot_the_script_learns_it_again(uwsgi_server, redis_client):
    fac = facility()
    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        redis_client.script_flush()  # as after a restart
        assert apublish("after a flush", facility=fac, broadcast=True)[0] == 1
        assert recv(ws) == "after a flush"
        with override_settings(WS4REDIS_WAIT_REPLICAS=1, WS4REDIS_WAIT_TIMEOUT=0.05):
            redis_client.script_flush()
            with pytest.raises(NotReplicatedError):  # the script ran (loaded again), only WAIT found no replica
                apublish("flushed, then unacknowledged", facility=fac, broadcast=True)
        assert recv(ws) == "flushed, then unacknowledged"


def test_counted_in_the_publish_latency_histogram(redis_server):
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("ws4redis_publish_seconds_count") or 0
    apublish("timed", facility=facility(), broadcast=True)
    assert REGISTRY.get_sample_value("ws4redis_publish_seconds_count") == before + 1


class RefusingExecutor(ThreadPoolExecutor):
    """A loop's default executor that refuses work: what reaches it would have run on a thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.refused: list[object] = []

    def submit(self, fn, /, *args, **kwargs):
        self.refused.append(fn)
        raise RuntimeError(f"the async publisher handed {fn!r} to a thread pool")


def test_needs_no_thread_pool(uwsgi_server, monkeypatch):
    """The publish, the connection to Redis included (a fresh loop opens its own), runs on the loop alone."""
    fac = facility()
    executor = RefusingExecutor()
    started_threads: list[threading.Thread] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started_threads.append(thread)
        real_start(thread)

    async def run() -> int:
        asyncio.get_running_loop().set_default_executor(executor)
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", start)
            publisher = RedisPublisher(facility=fac, broadcast=True, users=["john"], groups=["cooks"])
            return await publisher.apublish_message("no thread", expire=0)

    with client(uwsgi_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        assert asyncio.run(run()) >= 1
        assert recv(ws) == "no thread"
    assert executor.refused == [] and started_threads == []
