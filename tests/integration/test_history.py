"""History read a page at a time, in id order across a client's channels, against a real redis-server."""

from __future__ import annotations

import random
import time

import pytest
import redis
from django.test import override_settings

from tests.integration.helpers import facility
from tests.servers import wait_for
from ws4redis_uwsgi.bus import history
from ws4redis_uwsgi.core import envelope
from ws4redis_uwsgi.core.outbox import Opening, Outbox
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def read_all(reader: history.BacklogReader) -> list[list[str]]:
    pages = []
    while (page := reader.next_page()) is not None:
        assert page.messages and len(page.messages) <= history.PAGE_ENTRIES
        assert page.nbytes == sum(len(m.payload) for m in page.messages)
        pages.append([m.payload.decode() for m in page.messages])
    return pages


def read_through(outbox: Outbox, reader: history.BacklogReader) -> tuple[list[str], list[str]]:
    """What a client with ``outbox`` gets from ``reader``: the payloads, and the token in front of each."""
    texts, tokens = [], []
    for page in read_all_pages(reader):
        for message in outbox.fresh(page):
            texts.append(message.payload.decode())
            tokens.append(outbox.token())
    return texts, tokens


def read_all_pages(reader: history.BacklogReader) -> list[list]:
    pages = []
    while (page := reader.next_page()) is not None:
        assert page.messages and len(page.messages) <= history.PAGE_ENTRIES
        pages.append(page.messages)
    return pages


def test_pages_merge_channels_in_id_order_and_a_token_resumes_exactly_after_its_message(redis_server):
    fac = facility()
    channels = (f"test:broadcast:{fac}", f"test:user:john:{fac}", f"test:group:cooks:{fac}")
    audiences = [{"broadcast": True}, {"users": ["john"]}, {"groups": ["cooks"]}]
    rng = random.Random(7)
    published: list[str] = []
    arrived_ms = int(time.time() * 1000) - 1  # a client that arrived just before
    for i in range(400):
        chosen = rng.sample(audiences, rng.randint(1, 3))  # one message on several of the client's channels, too
        publisher = RedisPublisher(facility=fac, **{k: v for a in chosen for k, v in a.items()})
        publisher.publish_message(f"m{i}", expire=0)
        published.append(f"m{i}")
    client = redis.Redis.from_url(redis_server.url)

    outbox = Outbox(with_ids=True, arrived_ms=arrived_ms)
    outbox.channels = channels
    reader = history.BacklogReader(client, outbox.begin_catch_up())  # from its arrival: everything
    assert len(read_all_pages(history.BacklogReader(client, outbox.positions()))) > 1
    texts, tokens = read_through(outbox, reader)
    assert texts == published  # in publish order, each once although it is on up to three channels
    assert not reader.gap

    # A client that processed m250 resumes with the token in front of it.
    later = Outbox(resume=tokens[250])
    later.channels = channels
    assert later.opening(int(time.time() * 1000)) is Opening.BACKLOG
    rest, _ = read_through(later, history.BacklogReader(client, later.begin_catch_up()))
    assert rest == published[251:]


def test_large_messages_make_small_pages(redis_server):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    for i in range(40):
        publisher.publish_message(f"{i:02d}" + "x" * 100_000, expire=0)
    client = redis.Redis.from_url(redis_server.url)
    pages = read_all(history.BacklogReader(client, {f"test:broadcast:{fac}": (int(time.time() * 1000) - 60_000, 0)}))
    assert [p[:2] for page in pages for p in page] == [f"{i:02d}" for i in range(40)]
    # After the first read, a page aims at PAGE_BYTES: a few of these messages, not PAGE_ENTRIES.
    assert max(len(page) for page in pages[1:]) <= history.PAGE_BYTES // 100_000 + 1


def test_a_history_that_expired_with_its_idle_channel_is_a_gap_for_a_position_from_before(redis_server):
    fac = facility()
    channel = f"test:broadcast:{fac}"
    client = redis.Redis.from_url(redis_server.url)
    with override_settings(WS4REDIS_HISTORY_SECONDS=1):
        publisher = RedisPublisher(facility=fac, broadcast=True)
        publisher.publish_message("old", expire=0)
        old = envelope.parse_id(publisher.last_message_id)
        assert 0 < client.pttl(history.stream_key(channel)) <= 1000  # an idle channel's history expires
        wait_for(lambda: not client.exists(history.stream_key(channel)), 5, "the history to expire")
        publisher.publish_message("new", expire=0)
        assert [e[b"m"].rpartition(b"\n")[2] for _, e in client.xrange(history.stream_key(channel))] == [b"new"]
        # Nothing remembers what the expired history held: a client from before is told.
        before = history.BacklogReader(client, {channel: (old[0] - 1, 0)})
        assert [m.payload for m in before.next_page().messages] == [b"old", b"new"][1:] and before.gap
        # One that arrived after the horizon misses nothing.
        recent = history.BacklogReader(client, {channel: (int(time.time() * 1000) - 500, 0)})
        assert [m.payload for m in recent.next_page().messages] == [b"new"] and not recent.gap
