"""Presence, the pure part and the checks: values in, values out (no Redis)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from ws4redis_uwsgi import presence
from ws4redis_uwsgi.checks import check_presence
from ws4redis_uwsgi.core.channels import parse_query, restrict
from ws4redis_uwsgi.core.envelope import BusMessage
from ws4redis_uwsgi.core.outbox import Outbox
from ws4redis_uwsgi.core.positions import decode_token
from ws4redis_uwsgi.core.presence import (
    LocalPresence,
    PresenceKeys,
    check_facility,
    event_frame,
    expiry_ms,
    heartbeat_interval,
    parse_event,
    presence_rule,
    setting_problem,
    ttl_problem,
)


def only_chat(facility):
    return facility.startswith("chat")


# -- the setting ----------------------------------------------------------------------------


def _load(path):
    assert path == "tests.unit.test_presence.only_chat"
    return only_chat


@pytest.mark.parametrize(
    ("value", "on", "off"),
    [
        (False, [], ["chat", "news"]),
        (True, ["chat", "news"], []),
        (["chat", "lobby"], ["chat", "lobby"], ["news", "chatroom"]),
        (("chat",), ["chat"], ["news"]),
        ({"chat"}, ["chat"], ["news"]),
        (only_chat, ["chat", "chatroom"], ["news"]),
        ("tests.unit.test_presence.only_chat", ["chat", "chatroom"], ["news"]),
    ],
)
def test_the_setting_decides_per_facility(value, on, off):
    rule = presence_rule(value, _load)
    assert [rule(f) for f in on] == [True] * len(on)
    assert [rule(f) for f in off] == [False] * len(off)


@pytest.mark.parametrize(
    "value", [False, True, ["chat"], ("a", "b"), frozenset(), only_chat, "tests.unit.test_presence.only_chat"]
)
def test_good_settings_have_no_problem(value):
    assert setting_problem(value) is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("chat", "for one facility write ['chat']"),
        (1, "is 1"),
        (None, "is None"),
        ({"chat": True}, "is {'chat': True}"),
        (b"chat", "is b'chat'"),
        (["chat", 3], "holds 3"),
        (["a:b"], "forbidden character"),
        ([""], "missing facility"),
        (["x" * 201], "too long"),
    ],
)
def test_bad_settings_say_what_is_wrong(value, says):
    problem = setting_problem(value)
    assert problem is not None and says in problem


@pytest.mark.parametrize("value", [1, 30, 2.5, 86400])
def test_good_ttls(value):
    assert ttl_problem(value) is None


@pytest.mark.parametrize("value", [0, 0.5, -3, True, "30", None, 86401])
def test_bad_ttls(value):
    assert ttl_problem(value) == f"is {value!r}"


def test_a_dead_worker_is_dropped_within_the_ttl():
    # Readers drop it at its expiry, refreshing workers a heartbeat later at most.
    assert expiry_ms(30) == 18_000
    assert heartbeat_interval(30) == 6
    assert expiry_ms(30) / 1000 + heartbeat_interval(30) <= 30
    # A live worker may miss two refreshes.
    assert expiry_ms(30) / 1000 >= 3 * heartbeat_interval(30)


# -- the checks -------------------------------------------------------------------------------


def test_the_defaults_pass_the_presence_check():
    assert check_presence() == []


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("WS4REDIS_PRESENCE", "chat", "ws4redis_uwsgi.E020"),
        ("WS4REDIS_PRESENCE", 7, "ws4redis_uwsgi.E020"),
        ("WS4REDIS_PRESENCE", ["a b"], "ws4redis_uwsgi.E020"),
        ("WS4REDIS_PRESENCE", "no.such.module.function", "ws4redis_uwsgi.E020"),
        ("WS4REDIS_PRESENCE_TTL", 0, "ws4redis_uwsgi.E021"),
        ("WS4REDIS_PRESENCE_TTL", "30", "ws4redis_uwsgi.E021"),
    ],
)
def test_a_bad_presence_setting_is_an_error_with_a_hint(setting, value, check_id):
    with override_settings(**{setting: value}):
        errors = check_presence()
    assert [e.id for e in errors] == [check_id]
    assert setting in errors[0].msg and errors[0].hint


@pytest.mark.parametrize("value", [True, ["chat"], "tests.unit.test_presence.only_chat", only_chat])
def test_good_presence_settings_pass_the_check(value):
    with override_settings(WS4REDIS_PRESENCE=value, WS4REDIS_PRESENCE_TTL=5):
        assert check_presence() == []


# -- facilities and the public API's refusals (before any Redis) -----------------------------------


@pytest.mark.parametrize("value", [None, 3, b"chat", ["chat"], object()])
def test_a_facility_that_is_no_str_is_a_type_error(value):
    with pytest.raises(TypeError, match="a facility is a str"):
        check_facility(value)
    with override_settings(WS4REDIS_PRESENCE=True), pytest.raises(TypeError):
        presence.count(value)
    with override_settings(WS4REDIS_PRESENCE=True), pytest.raises(TypeError):
        presence.online_users(value)


@pytest.mark.parametrize("value", ["", "x" * 201, "a:b", "a b", "a\nb", "a\x00b", "a*", "é\x85"])
def test_a_string_that_cannot_be_a_facility_is_a_value_error(value):
    with pytest.raises(ValueError, match="not a facility"):
        check_facility(value)
    with override_settings(WS4REDIS_PRESENCE=True), pytest.raises(ValueError, match="not a facility"):
        presence.count(value)
    with override_settings(WS4REDIS_PRESENCE=True), pytest.raises(ValueError, match="not a facility"):
        presence.online_users(value)


def test_a_facility_without_presence_is_a_value_error_that_says_how_to_fix_it():
    with override_settings(WS4REDIS_PRESENCE=["chat"]):
        with pytest.raises(presence.PresenceOffError, match="add it to WS4REDIS_PRESENCE"):
            presence.count("news")
        with pytest.raises(ValueError, match="has no presence"):
            presence.online_users("news")
        assert presence.enabled("chat") and not presence.enabled("news")
    with override_settings(WS4REDIS_PRESENCE=True):
        assert presence.enabled("news")  # the decision follows the setting


# -- names and frames ---------------------------------------------------------------------------


def test_keys_share_one_hash_tag_on_a_cluster():
    keys = PresenceKeys.of("p", "chat", sharded=True)
    assert keys.channel == "p:{presence:chat}"
    names = [keys.users, keys.total, keys.workers, keys.worker_totals, keys.worker("w1")]
    assert all(name.startswith("p:{presence:chat}:") for name in names)
    assert PresenceKeys.of(None, "chat").users == "presence:chat:users"


def test_event_frames_round_trip_and_start_with_a_bang():
    for kind in ("join", "leave"):
        for name in ("john", "jöhn", "a\nb", "!x"):
            frame = event_frame(kind, name)
            assert frame.startswith(b"!")
            assert parse_event(frame) == (kind, name)
    with pytest.raises(ValueError):
        event_frame("wave", "john")


@pytest.mark.parametrize("data", [b"join\njohn", b"!join\n", b"!wave\njohn", b"!join", b"hello", b"!leave\n\xff"])
def test_anything_else_is_no_event(data):
    assert parse_event(data) is None


def test_asking_for_events_frames_the_messages():
    assert parse_query("subscribe-broadcast&presence").presence
    assert parse_query("subscribe-broadcast&presence").framing == ""
    assert parse_query("subscribe-broadcast").framing is None
    assert not parse_query("subscribe-broadcast").presence
    token_request = parse_query("presence&resume=")
    assert token_request.framing == ""
    assert restrict(parse_query("subscribe-user&presence"), ["subscribe-user"]).presence


def test_a_notice_goes_without_a_token_and_messages_keep_theirs():
    outbox = Outbox(with_ids=True, arrived_ms=1000)
    outbox.channels = ("c",)
    message = BusMessage(b"!join\njohn", id="2000-0", channel="c")  # a message that looks like an event
    notice = BusMessage(event_frame("join", "john"), notice=True)
    written: list[bytes] = []
    assert outbox.take_live(message, lambda frame: written.append(frame) or True)
    assert outbox.take_live(notice, lambda frame: written.append(frame) or True)
    # Server frames: 2 header bytes for these short texts.
    token, _, payload = written[0][2:].partition(b"\n")
    assert not token.startswith(b"!") and decode_token(token.decode())
    assert payload == b"!join\njohn"
    assert written[1][2:] == b"!join\njohn"


# -- a worker's own counts ---------------------------------------------------------------------


def test_three_tabs_are_one_user_with_three_connections():
    local = LocalPresence()
    for _ in range(3):
        local.add("john")
    local.add(None)
    assert local.users == {"john": 3}
    assert local.total == 4
    assert local.take_changes() == (4, {"john": 3})
    assert not local.changed


def test_a_reload_nets_to_nothing():
    local = LocalPresence()
    local.add("john")
    local.take_changes()
    local.remove("john")
    local.add("john")
    assert not local.changed
    assert local.take_changes() == (0, {})
    local.remove("john")
    assert local.take_changes() == (-1, {"john": -1})
    assert local.users == {} and local.total == 0


def test_the_whole_state_includes_what_was_pending():
    local = LocalPresence()
    local.add("john")
    local.add("mary")
    local.add(None)
    assert local.take_state() == (3, {"john": 1, "mary": 1})
    assert not local.changed
