"""History read a page at a time, in id order across a client's channels, against a real redis-server."""

from __future__ import annotations

import random

import pytest
import redis

from tests.integration.helpers import facility
from ws4redis_uwsgi.bus import history
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def read_all(reader: history.BacklogReader) -> list[list[str]]:
    pages = []
    while (page := reader.next_page()) is not None:
        assert page.messages and len(page.messages) <= history.PAGE_ENTRIES
        assert page.nbytes == sum(len(m.payload) for m in page.messages)
        pages.append([m.payload.decode() for m in page.messages])
    return pages


def test_pages_merge_channels_in_id_order_and_hand_out_each_message_once(redis_server):
    fac = facility()
    channels = [f"test:broadcast:{fac}", f"test:user:john:{fac}", f"test:group:cooks:{fac}"]
    audiences = [{"broadcast": True}, {"users": ["john"]}, {"groups": ["cooks"]}]
    rng = random.Random(7)
    published: list[tuple[str, str]] = []
    for i in range(400):
        chosen = rng.sample(audiences, rng.randint(1, 3))  # one message on several of the client's channels, too
        publisher = RedisPublisher(facility=fac, **{k: v for a in chosen for k, v in a.items()})
        publisher.publish_message(f"m{i}", expire=0)
        published.append((publisher.last_message_id, f"m{i}"))
    client = redis.Redis.from_url(redis_server.url)

    reader = history.BacklogReader(client, channels, "0-0")
    pages = read_all(reader)
    assert [p for page in pages for p in page] == [text for _, text in published]
    assert len(pages) > 1 and not reader.gap

    middle_id = published[250][0]
    later = read_all(history.BacklogReader(client, channels, middle_id))
    assert [p for page in later for p in page] == [text for _, text in published[251:]]


def test_large_messages_make_small_pages(redis_server):
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    for i in range(40):
        publisher.publish_message(f"{i:02d}" + "x" * 100_000, expire=0)
    client = redis.Redis.from_url(redis_server.url)
    pages = read_all(history.BacklogReader(client, [f"test:broadcast:{fac}"], "0-0"))
    assert [p[:2] for page in pages for p in page] == [f"{i:02d}" for i in range(40)]
    # After the first read, a page aims at PAGE_BYTES: a few of these messages, not PAGE_ENTRIES.
    assert max(len(page) for page in pages[1:]) <= history.PAGE_BYTES // 100_000 + 1
