"""History read a page at a time, in id order across a client's channels, against a real redis-server."""

from __future__ import annotations

import random
import time

import pytest
import redis

from tests.integration.helpers import facility
from ws4redis_uwsgi.bus import history
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
    for i in range(400):
        chosen = rng.sample(audiences, rng.randint(1, 3))  # one message on several of the client's channels, too
        publisher = RedisPublisher(facility=fac, **{k: v for a in chosen for k, v in a.items()})
        publisher.publish_message(f"m{i}", expire=0)
        published.append(f"m{i}")
    client = redis.Redis.from_url(redis_server.url)

    outbox = Outbox(with_ids=True)
    outbox.channels = channels
    reader = history.BacklogReader(client, outbox.begin_catch_up())  # from (0, 0): everything
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
    pages = read_all(history.BacklogReader(client, {f"test:broadcast:{fac}": (0, 0)}))
    assert [p[:2] for page in pages for p in page] == [f"{i:02d}" for i in range(40)]
    # After the first read, a page aims at PAGE_BYTES: a few of these messages, not PAGE_ENTRIES.
    assert max(len(page) for page in pages[1:]) <= history.PAGE_BYTES // 100_000 + 1
