"""Which message ids the hub trusts: those near the clock of the Redis their channel lives on, as it measures it."""

from __future__ import annotations

import time

import pytest

from ws4redis_uwsgi.bus import hub as hub_module
from ws4redis_uwsgi.bus.hub import SubscriptionHub, _Link
from ws4redis_uwsgi.core.envelope import MAX_ID_AHEAD_MS, BusMessage


class FakeRedis:
    """A Redis whose clock is this process's plus ``offset`` seconds; counts TIME calls."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.calls = 0

    def time(self) -> tuple[int, int]:
        self.calls += 1
        now = time.time() + self.offset
        return int(now), int((now % 1) * 1e6)

    @property
    def connection_pool(self) -> FakeRedis:
        return self

    def disconnect(self) -> None:
        pass


class FakeShards:
    """Two shards, ``a`` and ``b``; a channel lives on the shard its name starts with."""

    sharded = True

    def __init__(self, **clocks: FakeRedis) -> None:
        self.clocks = clocks

    def target(self, channel: str) -> str:
        return channel[0]

    def client(self, target: str) -> FakeRedis:
        return self.clocks[target]

    def refresh(self) -> None:
        pass


def connected(hub: SubscriptionHub, shards: FakeShards, target: str) -> _Link:
    """The link of ``target``, as if it had just connected (its clock measured)."""
    link = hub._links[target] = _Link(hub, target, shards)  # type: ignore[arg-type]
    link._measure_clock(shards.client(target))  # type: ignore[arg-type]
    for channel in ("a1", "b1"):
        if channel[0] == target:
            hub._route[channel] = link
    return link


def at(channel: str, seconds_ahead: float, redis: FakeRedis) -> BusMessage:
    ms = int((time.time() + redis.offset + seconds_ahead) * 1000)
    return BusMessage(b"x", id=f"{ms}-0", channel=channel)


def hub_of(**clocks: FakeRedis) -> tuple[SubscriptionHub, FakeShards]:
    shards = FakeShards(**clocks)
    return SubscriptionHub(shards), shards  # type: ignore[arg-type]


def test_ids_a_little_ahead_of_the_clock_are_trusted_and_those_seconds_ahead_are_not() -> None:
    redis = FakeRedis(0.0)
    hub, shards = hub_of(a=redis)
    link = connected(hub, shards, "a")
    assert hub.trusted(at("a1", 0, redis), "a1", link)
    assert hub.trusted(at("a1", MAX_ID_AHEAD_MS / 1000 - 0.2, redis), "a1", link)  # the measure's error
    assert not hub.trusted(at("a1", MAX_ID_AHEAD_MS / 1000 + 1, redis), "a1", link)
    assert not hub.trusted(at("a1", 30, redis), "a1", link)


def test_each_shard_is_judged_by_its_own_clock() -> None:
    ahead, behind = FakeRedis(10.0), FakeRedis(-10.0)
    hub, shards = hub_of(a=ahead, b=behind)
    connected(hub, shards, "a")
    connected(hub, shards, "b")
    # Found by the channel's route, as for stored messages and history.
    assert hub.trusted(at("a1", 0, ahead), "a1")
    assert hub.trusted(at("b1", 0, behind), "b1")
    assert not hub.trusted(at("b1", 0, ahead), "b1")  # 20 s ahead of b's clock


def test_a_clock_that_stepped_since_the_connection_is_measured_again_before_an_id_is_dropped(monkeypatch) -> None:
    monkeypatch.setattr(hub_module, "CLOCK_RECHECK_INTERVAL", 0.0)
    redis = FakeRedis(0.0)
    hub, shards = hub_of(a=redis)
    link = connected(hub, shards, "a")
    redis.offset = 5.0  # Redis's host stepped its clock (or the two drifted apart)
    assert hub.trusted(at("a1", 0, redis), "a1", link)
    assert link.clock_offset == pytest.approx(5.0, abs=0.1)


def test_forged_ids_make_the_hub_measure_again_once_per_interval() -> None:
    redis = FakeRedis(0.0)
    hub, shards = hub_of(a=redis)
    link = connected(hub, shards, "a")
    link._measured_at -= hub_module.CLOCK_RECHECK_INTERVAL  # the connection is older than the interval
    calls = redis.calls
    for _ in range(1000):
        assert not hub.trusted(at("a1", 30, redis), "a1", link)
    assert redis.calls - calls == hub_module.CLOCK_SAMPLES  # one measure, of a few round trips


def test_a_hub_without_a_route_for_the_channel_judges_by_its_last_measure() -> None:
    redis = FakeRedis(0.0)
    hub, shards = hub_of(a=redis)
    connected(hub, shards, "a")
    assert hub.trusted(at("zz", 0, redis), "zz")
    assert not hub.trusted(at("zz", 30, redis), "zz")
