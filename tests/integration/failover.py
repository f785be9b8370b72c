"""Faults under load for the Sentinel and Cluster tests: a worker on a setting, a counting publisher, resuming clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from django.test import override_settings

from tests.conftest import SITE_ENV
from tests.integration.test_resume import ResumingClient
from tests.servers import TIMING, UwsgiServer
from ws4redis_uwsgi.publisher import RedisPublisher


@contextmanager
def worker_on(setting: str, tmp_path: Path) -> Iterator[UwsgiServer]:
    """A websocket worker whose ``WS4REDIS_CONNECTION`` is ``setting``, and publishers in this process on it too."""
    server = UwsgiServer({**SITE_ENV, "WS4REDIS_TEST_REDIS": setting}, cores=100, log_path=tmp_path / "uwsgi.log")
    server.start()
    try:
        with override_settings(WS4REDIS_CONNECTION=setting):
            yield server
    finally:
        server.stop()


class TimedPublisher(threading.Thread):
    """Publishes numbered broadcasts until stopped; remembers which Redis accepted and how long each call took."""

    def __init__(self, fac: str, setting: str, **overrides: object) -> None:
        super().__init__(daemon=True)
        self.facility = fac
        self.setting = setting
        self.overrides = overrides
        self.accepted: list[str] = []
        self.accepted_at: dict[str, float] = {}  # time.monotonic() at which Redis accepted each
        self.refused: list[str] = []
        self.slowest = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        with override_settings(WS4REDIS_CONNECTION=self.setting, **self.overrides):
            publisher = RedisPublisher(facility=self.facility, broadcast=True)
            n = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    publisher.publish_message(f"n{n}", expire=0)
                    self.accepted.append(f"n{n}")
                    self.accepted_at[f"n{n}"] = time.monotonic()
                except redis.RedisError:
                    self.refused.append(f"n{n}")
                self.slowest = max(self.slowest, time.monotonic() - started)
                n += 1
                time.sleep(0.004)


def number(payload: str) -> int:
    return int(payload[1:])


def assert_ordered_once(resumer: ResumingClient) -> None:
    numbers = [number(p) for p in resumer.payloads]
    assert numbers == sorted(set(numbers)), "a repeat or a message out of order"


def under_fault(
    url: str,
    publisher: TimedPublisher,
    fault: Callable[[], object],
    *,
    clients: int = 6,
    before_leaving: Callable[[], object] | None = None,
) -> list[ResumingClient]:
    """Run ``fault()`` while ``publisher`` publishes and resuming clients read ``url``.

    The fault comes once 100 messages were accepted, and publishing goes on
    until 100 more were accepted after it; then every client is given the
    time to receive the last one.
    ``before_leaving`` runs while the clients are still connected.
    """

    async def scenario() -> list[ResumingClient]:
        stop = asyncio.Event()
        resumers = [ResumingClient(url) for _ in range(clients)]
        tasks = [asyncio.ensure_future(r.run(stop)) for r in resumers]
        await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in resumers)), 20 * TIMING)
        publisher.start()
        # 100 accepted before the fault too (a count, not a time: a loaded machine publishes slower).
        deadline = time.monotonic() + 30 * TIMING
        while len(publisher.accepted) < 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(fault)
        accepted_after = len(publisher.accepted)
        deadline = time.monotonic() + 30 * TIMING
        while len(publisher.accepted) < accepted_after + 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        publisher.stop.set()
        await asyncio.to_thread(publisher.join)
        last = publisher.accepted[-1]
        deadline = time.monotonic() + 30 * TIMING
        while time.monotonic() < deadline and any(not r.payloads or r.payloads[-1] != last for r in resumers):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # time for a repeat to show up
        if before_leaving is not None:
            await asyncio.to_thread(before_leaving)
        stop.set()
        await asyncio.gather(*tasks)
        return resumers

    return asyncio.run(scenario())


def assert_no_silent_hole(resumers: list[ResumingClient], publisher: TimedPublisher, held: list[str]) -> None:
    """Every message the new master ``held`` reached every client once and in order, or the client got ``!gap``."""
    assert publisher.refused, "the publisher saw the failover"
    assert set(publisher.accepted[-100:]) <= set(held)  # published after the failover: on the new master
    for resumer in resumers:
        assert_ordered_once(resumer)
        assert resumer.payloads[-1] == publisher.accepted[-1]
        if resumer.gaps == 0:
            first, got = number(resumer.payloads[0]), set(resumer.payloads)
            assert [m for m in held if number(m) >= first and m not in got] == [], "a silent hole"


def held_payloads(node: redis.Redis, stream: str) -> list[str]:
    """The payloads a history stream holds, in order."""
    return [entry[b"m"].rpartition(b"\n")[2].decode() for _, entry in node.xrange(stream)]
