"""The per-worker identity cache (ws4redis_uwsgi.django.identity_cache) and live authorization's evictions: values in and out."""

from __future__ import annotations

import time

import pytest

from ws4redis_uwsgi.core.control import Command, Verb, moved_to
from ws4redis_uwsgi.core.envelope import BusMessage
from ws4redis_uwsgi.django.identity_cache import CLAIMS_AT_MOST, Entry, IdentityCache, get_identity_cache
from ws4redis_uwsgi.server.authority import Authority

ENGINE = "django.contrib.sessions.backends.db"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def live_cache(max_entries: int = 100) -> tuple[IdentityCache, Clock]:
    clock = Clock()
    cache = IdentityCache(max_entries=max_entries, clock=clock)
    cache.live = lambda: True
    return cache, clock


def entry(user_pk: str = "1", ref: str = "ref-a") -> Entry:
    return Entry(session={"_auth_user_id": user_pk}, user=f"user {user_pk}", user_pk=user_pk, ref=ref)


def key(cookie: str) -> tuple[str, str]:
    return (ENGINE, cookie)


def test_an_entry_is_served_until_its_seconds_are_up_and_a_hit_does_not_extend_them():
    cache, clock = live_cache()
    kept = entry()
    assert cache.put(key("a"), kept, cache.ticket(), ttl=5)
    clock.now += 4.9
    assert cache.get(key("a")) is kept
    clock.now += 0.1
    assert cache.get(key("a")) is None
    assert len(cache) == 0 and not kept.current


def held_entry(max_age: float) -> tuple[IdentityCache, Clock, set[str], Entry]:
    """A cache with one entry (ttl 5 s) of session ``ref-a``, which has a websocket here while ``ref-a`` is in the set."""
    cache, clock = live_cache()
    open_here = {"ref-a"}
    cache.held = open_here.__contains__
    kept = entry(ref="ref-a")
    assert cache.put(key("a"), kept, cache.ticket(), ttl=5, max_age=max_age)
    return cache, clock, open_here, kept


def test_an_entry_of_a_session_with_a_websocket_here_stays_and_gets_its_seconds_again_from_the_last_close():
    cache, clock, open_here, kept = held_entry(max_age=3600)
    clock.now += 600  # a user who stayed ten minutes on the page
    assert cache.get(key("a")) is kept and cache.fresh(kept)
    open_here.clear()
    cache.release("ref-a", ttl=5)  # the page's websocket closed: the next page's opens within seconds
    clock.now += 4.9
    assert cache.get(key("a")) is kept
    clock.now += 0.1
    assert cache.get(key("a")) is None and not kept.current


def test_an_entry_is_read_again_after_its_max_age_however_its_websockets_come_and_go():
    """The periodic re-check's bound: a session ended without a signal is read again within WS4REDIS_SESSION_RECHECK."""
    cache, clock, _, kept = held_entry(max_age=60)
    for _ in range(11):  # a websocket closes and the next opens every 5 s
        clock.now += 5
        cache.release("ref-a", ttl=5)
        assert cache.get(key("a")) is kept
    clock.now += 5
    assert cache.get(key("a")) is None and not kept.current  # 60 s after the read, held or not


def test_a_release_never_shortens_an_entry_and_leaves_other_sessions_alone():
    cache, clock = live_cache()
    young, other = entry(ref="ref-a"), entry(ref="ref-b")
    cache.put(key("a"), young, cache.ticket(), ttl=60)
    cache.put(key("b"), other, cache.ticket(), ttl=5)
    cache.release("ref-a", ttl=5)
    cache.release("ref-unknown", ttl=5)
    clock.now += 30
    assert cache.get(key("a")) is young and cache.get(key("b")) is None


def test_nothing_is_kept_for_no_seconds_or_while_evictions_do_not_arrive():
    cache, _ = live_cache()
    assert not cache.put(key("a"), entry(), cache.ticket(), ttl=0)
    hearing = [False]
    cache.live = lambda: hearing[0]
    assert not cache.put(key("a"), entry(), cache.ticket(), ttl=5)
    hearing[0] = True
    kept = entry()
    assert cache.put(key("a"), kept, cache.ticket(), ttl=5)
    hearing[0] = False  # the control channel's subscription was lost: serve nothing
    assert cache.get(key("a")) is None
    assert cache.groups_of(kept) is None
    hearing[0] = True
    assert cache.get(key("a")) is kept


def test_the_least_recently_used_entry_goes_first_beyond_the_bound():
    cache, _ = live_cache(max_entries=3)
    for cookie in "abc":
        cache.put(key(cookie), entry(ref=f"ref-{cookie}"), cache.ticket(), ttl=5)
    assert cache.get(key("a")) is not None  # a is now the most recently used
    cache.put(key("d"), entry(ref="ref-d"), cache.ticket(), ttl=5)
    assert len(cache) == 3
    assert cache.get(key("b")) is None
    assert all(cache.get(key(c)) is not None for c in "acd")
    cache.evict_ref("ref-b")  # its index went with it: nothing left to find
    assert len(cache) == 3


def test_evicting_a_user_forgets_every_session_of_that_user_only():
    cache, _ = live_cache()
    cache.put(key("a"), entry("1", "ref-a"), cache.ticket(), ttl=5)
    cache.put(key("b"), entry("1", "ref-b"), cache.ticket(), ttl=5)
    cache.put(key("c"), entry("2", "ref-c"), cache.ticket(), ttl=5)
    cache.evict_user("1")
    assert cache.get(key("a")) is None and cache.get(key("b")) is None
    assert cache.get(key("c")) is not None
    cache.evict_user("no such user")
    assert len(cache) == 1


def test_evicting_a_session_reference_forgets_that_session_only():
    cache, _ = live_cache()
    cache.put(key("a"), entry("1", "ref-a"), cache.ticket(), ttl=5)
    cache.put(key("b"), entry("1", "ref-b"), cache.ticket(), ttl=5)
    cache.evict_ref("ref-a")
    assert cache.get(key("a")) is None
    assert cache.get(key("b")) is not None


def test_clearing_forgets_everything_and_held_entries_stop_being_trusted():
    cache, _ = live_cache()
    held = entry()
    cache.put(key("a"), held, cache.ticket(), ttl=5)
    assert cache.add_groups(held, ("cooks",), cache.ticket())
    assert cache.groups_of(held) == ("cooks",)
    cache.clear()
    assert len(cache) == 0 and cache.get(key("a")) is None
    assert cache.groups_of(held) is None
    assert not cache.add_groups(held, ("cooks",), cache.ticket())


@pytest.mark.parametrize(
    "eviction",
    [
        lambda cache: cache.evict_user("1"),
        lambda cache: cache.evict_ref("ref-a"),
        lambda cache: cache.evict_user("someone else"),  # one counter for all: never wrong, at worst a miss
        IdentityCache.clear,
    ],
)
def test_a_read_under_way_when_an_eviction_came_is_not_kept(eviction):
    """A handshake read the database, an eviction came while it waited on it, then it would store what it read."""
    cache, _ = live_cache()
    ticket = cache.ticket()  # the handshake starts reading
    eviction(cache)  # the user's groups changed, the session ended...
    assert not cache.put(key("a"), entry("1", "ref-a"), ticket, ttl=5)  # what it read may be from before
    assert cache.get(key("a")) is None
    assert cache.put(key("a"), entry("1", "ref-a"), cache.ticket(), ttl=5)  # the next handshake's read is kept


def test_groups_read_while_an_eviction_came_are_not_kept():
    cache, _ = live_cache()
    held = entry()
    cache.put(key("a"), held, cache.ticket(), ttl=5)
    ticket = cache.ticket()
    cache.evict_user("2")
    assert not cache.add_groups(held, ("old group",), ticket)
    assert cache.groups_of(held) is None
    assert cache.add_groups(held, ("new group",), cache.ticket())
    assert cache.groups_of(held) == ("new group",)


# -- what live authorization evicts (Authority.deliver and resync, no Redis: the commands are handed in) ------------------


def filled() -> IdentityCache:
    cache = get_identity_cache()
    cache.live = lambda: True
    cache.put(key("a"), entry("1", "ref-a"), cache.ticket(), ttl=60)
    cache.put(key("b"), entry("1", "ref-b"), cache.ticket(), ttl=60)
    cache.put(key("c"), entry("2", "ref-c"), cache.ticket(), ttl=60)
    return cache


@pytest.mark.parametrize(
    ("command", "left"),
    [
        (Command(Verb.END, "ref-a"), "bc"),
        (Command(Verb.MOVED, "ref-a", moved_to("ref-new", "00ff")), "bc"),
        (Command(Verb.GONE, "1"), "c"),
        (Command(Verb.USER, "1"), "c"),
        (Command(Verb.GROUPS, "1"), "c"),
        (Command(Verb.GROUPS, "3"), "abc"),
    ],
    ids=lambda value: value.verb.value if isinstance(value, Command) else value,
)
def test_each_control_command_evicts_its_session_or_user_even_without_websockets_here(command, left):
    cache = filled()
    Authority().deliver(BusMessage(command.encode()))
    assert "".join(c for c in "abc" if cache.get(key(c)) is not None) == left


def test_a_control_channel_that_was_down_empties_the_cache_and_refuses_the_claims_made_before_it_came_back():
    cache = filled()
    cache.hearing_from(time.time() - 60)
    assert cache.admits("1", "ref-a", time.time() - 30)
    Authority().resync()
    assert len(cache) == 0
    assert not cache.admits("1", "ref-a", time.time() - 1)
    assert cache.admits("1", "ref-a", time.time() + 0.01)


# -- whether a page's identity claim made at some time still holds (IdentityCache.admits) ----------------------------------


def claims_cache() -> tuple[IdentityCache, Clock, list[bool]]:
    """A cache on a wall clock of its own, and the switch of its ``live``."""
    wall, live = Clock(), [True]
    cache = IdentityCache(wall=wall)
    cache.live = lambda: live[0]
    return cache, wall, live


def test_a_claim_made_after_the_cache_started_hearing_and_before_no_eviction_is_admitted():
    cache, wall, live = claims_cache()
    live[0] = False
    cache.hearing_from()  # not live: nothing changes
    live[0] = True
    assert not cache.admits("1", "ref-a", wall.now - 0.1)  # nobody said since when: from this first look on
    wall.now += 2
    assert cache.admits("1", "ref-a", wall.now - 1)
    assert cache.admits("1", "ref-a", wall.now + 1)  # a claim's clock a little ahead: still after the start
    cache.hearing_from(wall.now - 10)  # live authorization: its channel was confirmed then
    assert cache.admits("1", "ref-a", wall.now - 5)


def test_an_eviction_of_its_user_or_its_session_refuses_the_claims_made_before_it_only():
    cache, wall, _ = claims_cache()
    cache.admits("0", "ref-0", 0.0)
    made = wall.now + 5
    wall.now += 10
    cache.evict_user("1")
    cache.evict_ref("ref-b")
    assert not cache.admits("1", "ref-a", made)  # its user changed since
    assert not cache.admits("2", "ref-b", made)  # its session ended since
    assert cache.admits("2", "ref-a", made)  # another user, another session
    assert cache.admits("1", "ref-a", wall.now + 0.5)  # made after the eviction


def test_claims_made_before_the_control_channel_came_back_or_while_it_was_down_are_refused():
    cache, wall, live = claims_cache()
    cache.admits("0", "ref-0", 0.0)
    made = wall.now + 1
    wall.now += 2
    assert cache.admits("1", "ref-a", made)
    live[0] = False
    assert not cache.admits("1", "ref-a", made)
    live[0] = True
    wall.now += 2
    assert not cache.admits("1", "ref-a", made)  # evictions may have gone by while it was down
    cache.clear()  # the hub's resync once the subscription is back
    wall.now += 2
    assert not cache.admits("1", "ref-a", wall.now - 1)
    assert cache.admits("1", "ref-a", wall.now + 0.1)


def test_evictions_are_kept_as_long_as_a_claim_may_be_old_and_no_longer():
    cache, wall, _ = claims_cache()
    cache.admits("0", "ref-0", 0.0)
    for n in range(100):
        cache.evict_user(str(n))
        wall.now += 1
    made = wall.now - 50.5  # after the first 50 evictions
    assert not cache.admits("60", "ref-a", made) and cache.admits("40", "ref-a", made)
    wall.now += CLAIMS_AT_MOST + 10
    cache.evict_user("last")
    assert len(cache._evicted) == 1
    assert not cache.admits("x", "ref-a", wall.now - CLAIMS_AT_MOST - 1)  # older than any claim may be
