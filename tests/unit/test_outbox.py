"""The delivery rules of one websocket (ws4redis_uwsgi.core.outbox): messages in, frames and decisions out, no I/O."""

from __future__ import annotations

import pytest

from ws4redis_uwsgi.core import positions
from ws4redis_uwsgi.core.envelope import MAX_ID_AHEAD_MS, BusMessage, new_durable_uid, new_uid
from ws4redis_uwsgi.core.frames import server_frame
from ws4redis_uwsgi.core.outbox import GAP_NOTICE, RECENT_UIDS, Opening, Outbox
from ws4redis_uwsgi.core.positions import TOKEN_UIDS, decode_token, encode_token

NOW = 1_700_000_000_000
A, B, C = "ws4redis:user:alice:chat", "ws4redis:session:k3y:chat", "ws4redis:broadcast:chat"


def message(
    channel: str,
    n: int | None,
    text: str = "",
    *,
    ms: int = NOW,
    origin: str | None = None,
    binary: bool = False,
    uid: str | None = None,
) -> BusMessage:
    """Message ``n`` on ``channel``: id ``<ms>-<n>``, or no id (a raw publish) for ``n=None``."""
    return BusMessage((text or f"m{n}").encode(), binary, origin, None if n is None else f"{ms}-{n}", channel, uid)


def outbox(*channels: str, **kwargs) -> Outbox:
    box = Outbox(**kwargs)
    box.channels = channels
    return box


class Socket:
    """A socket that takes frames at once (or refuses them, as a full one does)."""

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> bool:
        if self.takes:
            self.frames.append(frame)
        return self.takes


def drain(box: Outbox) -> list[BusMessage]:
    sent = []
    while (m := box.next()) is not None:
        sent.append(m)
    return sent


def unframe(frame: bytes) -> bytes:
    """The payload of a short unmasked server frame."""
    assert frame[1] < 126
    return frame[2:]


def read(payload: bytes, channels=(A, B, C)) -> tuple[dict[str, tuple[int, int]], bytes]:
    """A resuming client's view of a payload: the positions its token gives its channels, and the message."""
    token, newline, text = payload.partition(b"\n")
    assert newline
    known, ambiguous = decode_token(token.decode("ascii")).positions(channels)
    assert ambiguous == []
    return known, text


# -- the fast path ------------------------------------------------------------------


def test_a_live_message_is_written_at_once_when_nothing_waits():
    box, socket = outbox(A), Socket()
    assert box.take_live(message(A, 1), socket.write) is True
    assert socket.frames == [server_frame(b"m1")]
    assert box.next() is None


def test_without_a_direct_writer_a_live_message_waits_for_the_loop():
    box = outbox(A)
    assert box.take_live(message(A, 1), None) is False
    assert drain(box) == [message(A, 1)]


def test_a_socket_that_cannot_take_it_now_makes_the_message_wait_and_the_next_ones_behind_it():
    box, socket = outbox(A), Socket(takes=False)
    assert box.take_live(message(A, 1), socket.write) is False
    socket.takes = True
    assert box.take_live(message(A, 2), socket.write) is False  # not before the one that waits
    assert socket.frames == []
    assert drain(box) == [message(A, 1), message(A, 2)]
    assert box.take_live(message(A, 3), socket.write) is True  # nothing waits any more


def test_a_refused_write_is_not_recorded_and_the_message_goes_out_later_with_the_token_that_includes_it():
    box, socket = outbox(A, B, with_ids=True, arrived_ms=NOW - 5), Socket(takes=False)
    uid = new_uid()
    before = box.token()
    assert box.take_live(message(A, 1, uid=uid), socket.write) is False
    assert box.position(A) == (NOW - 5, 0)  # not handed out
    assert box.token() == before
    socket.takes = True
    box.take_live(message(B, 2, uid=uid), socket.write)  # its copy, queued behind it
    assert drain(box) == [message(A, 1, uid=uid)]  # the copy is skipped once the first is handed out
    assert socket.frames == []


def test_a_message_that_waited_carries_the_token_of_the_moment_it_is_handed_out():
    box, socket = outbox(A, B, with_ids=True, arrived_ms=NOW - 5), Socket(takes=False)
    box.take_live(message(A, 1), socket.write)
    box.take_live(message(B, 2), socket.write)
    first = box.next()
    assert read(box.payload(first), (A, B)) == ({A: (NOW, 1), B: (NOW - 5, 0)}, b"m1")
    second = box.next()
    assert read(box.payload(second), (A, B)) == ({A: (NOW, 1), B: (NOW, 2)}, b"m2")


# -- one message once: by its position in its channel ----------------------------------


@pytest.mark.parametrize("repeat", [5, 4, 1])
def test_a_message_at_or_below_its_channel_position_is_skipped(repeat):
    box, socket = outbox(A, B), Socket()
    box.take_live(message(A, 5), socket.write)
    assert box.take_live(message(A, repeat), socket.write) is True
    assert socket.frames == [server_frame(b"m5")]


def test_a_message_on_another_channel_with_a_lower_id_is_not_skipped():
    box, socket = outbox(A, B), Socket()
    box.take_live(message(A, 5), socket.write)
    assert box.take_live(message(B, 3, ms=NOW - 60_000), socket.write) is True
    assert socket.frames == [server_frame(b"m5"), server_frame(b"m3")]


def test_a_repeat_is_skipped_when_the_inbox_drains():
    box = outbox(A, B)
    for channel, n in [(A, 1), (A, 2), (B, 1), (A, 2), (A, 1), (B, 1), (A, 3)]:
        box.take_live(message(channel, n), None)
    assert drain(box) == [message(A, 1), message(A, 2), message(B, 1), message(A, 3)]


def test_stored_and_history_messages_skip_what_was_handed_out_and_record_the_rest():
    box, socket = outbox(A, B), Socket()
    box.take_live(message(A, 2), socket.write)
    assert list(box.fresh([message(A, 1), message(B, 1), message(A, 2), message(A, 3)])) == [message(B, 1), message(A, 3)]
    assert box.take_live(message(A, 3), socket.write) is True
    assert box.take_live(message(B, 1), socket.write) is True
    assert len(socket.frames) == 1
    assert box.positions() == {A: (NOW, 3), B: (NOW, 1)}


def test_fresh_records_each_message_when_it_yields_it():
    box = outbox(A, B, with_ids=True, arrived_ms=NOW - 5)
    found = box.fresh([message(A, 1), message(B, 2)])
    first = next(found)
    assert read(box.payload(first), (A, B)) == ({A: (NOW, 1), B: (NOW - 5, 0)}, b"m1")  # not yet the second
    second = next(found)
    assert read(box.payload(second), (A, B)) == ({A: (NOW, 1), B: (NOW, 2)}, b"m2")


def test_without_ids_a_stored_message_whose_live_copy_waits_is_left_out():
    """History off: published after the websocket subscribed and stored by the time it read; the live copy goes."""
    box = outbox(A, B)
    box.take_live(message(A, None, "new"), None)  # arrived while the handshake read the stored messages
    stored = [message(A, None, "new"), message(B, None, "new"), message(A, None, "new", binary=True)]
    assert list(box.fresh(stored)) == stored[1:]  # another channel's, or other content: not a copy
    assert list(box.fresh([message(A, None, "older")])) == [message(A, None, "older")]
    assert drain(box) == [message(A, None, "new")]
    assert list(box.fresh([message(A, None, "new")])) == [message(A, None, "new")]  # nothing waits any more


# -- one message once: a message published to several channels, by its uid ---------------


def test_a_copy_on_another_channel_of_a_message_handed_out_is_skipped():
    box, socket, uid = outbox(A, B), Socket(), new_uid()
    box.take_live(message(A, 5, uid=uid), socket.write)
    assert box.take_live(message(B, 9, uid=uid), socket.write) is True  # another id, the same message
    assert list(box.fresh([message(C, 1, uid=uid)])) == []
    assert socket.frames == [server_frame(b"m5")]


@pytest.mark.parametrize("way", ["live", "waiting", "history"])
def test_a_skipped_copy_moves_its_channel_on_so_that_a_resume_does_not_bring_it_back(way):
    box, uid = outbox(A, B, with_ids=True, arrived_ms=NOW - 5), new_uid()
    first, copy = message(A, 5, uid=uid), message(B, 9, uid=uid)
    if way == "live":
        box.take_live(first, Socket().write)
        box.take_live(copy, Socket().write)
    elif way == "waiting":
        box.take_live(first, None)
        box.take_live(copy, None)
        assert drain(box) == [first]
    else:
        assert list(box.fresh([first, copy])) == [first]
    assert box.positions() == {A: (NOW, 5), B: (NOW, 9)}
    assert decode_token(box.token()).positions([A, B]) == ({A: (NOW, 5), B: (NOW, 9)}, [])


@pytest.mark.parametrize(("others", "sent_again"), [(RECENT_UIDS - 1, False), (RECENT_UIDS, True)])
def test_a_copy_later_than_recent_uids_other_multi_channel_messages_is_sent_again(others, sent_again):
    box, socket, uid = outbox(A, B), Socket(), new_uid()
    box.take_live(message(A, 1, "first", uid=uid), socket.write)
    for n in range(2, others + 2):
        box.take_live(message(A, n, uid=new_uid()), socket.write)
    box.take_live(message(B, 1, "copy", uid=uid), socket.write)
    assert (socket.frames[-1] == server_frame(b"copy")) is sent_again
    assert len(socket.frames) == 1 + others + sent_again


def test_a_client_on_one_channel_keeps_no_uids():
    box, socket, uid = outbox(A, with_ids=True), Socket(), new_uid()
    box.take_live(message(A, 1, uid=uid), socket.write)
    assert decode_token(box.token()).uids == ()
    assert box.take_live(message(A, 2, "again", uid=uid), socket.write) is True  # judged by its position alone
    assert len(socket.frames) == 2


def test_the_token_carries_the_uids_of_the_last_multi_channel_messages():
    box, socket = outbox(A, B, with_ids=True), Socket()
    uids = [new_uid() for _ in range(TOKEN_UIDS + 2)]
    for n, uid in enumerate(uids, 1):
        box.take_live(message(A, n, uid=uid), socket.write)
    box.take_live(message(A, 99), socket.write)  # without uid: the uids stay
    assert decode_token(box.token()).uids == tuple(uids[-TOKEN_UIDS:])


def test_after_a_resume_a_copy_of_a_message_the_client_got_on_another_channel_is_skipped():
    before, socket, uid = outbox(A, B, with_ids=True, arrived_ms=NOW - 1000), Socket(), new_uid()
    before.take_live(message(A, 1, "first", uid=uid), socket.write)
    token, _, _ = unframe(socket.frames[-1]).partition(b"\n")
    after = outbox(A, B, resume=token.decode(), arrived_ms=NOW + 1000)
    assert after.opening(NOW + 1000) is Opening.BACKLOG
    backlog = [message(B, 2, "copy", uid=uid), message(B, 3, "next")]  # B's history after NOW - 1000
    assert list(after.fresh(backlog)) == [message(B, 3, "next")]


# -- one message once: a message of the durable outbox, by its uid, on every websocket -------
# The outbox publishes a message again when a crash left its row behind (under another id, or
# with none when history is off); a websocket on any number of channels hands it out once.


@pytest.mark.parametrize("ids", [False, True], ids=["history off", "history on"])
@pytest.mark.parametrize("way", ["live", "waiting", "stored"])
def test_a_durable_message_published_again_is_handed_out_once_on_one_channel(ids, way):
    box, socket, uid = outbox(A), Socket(), new_durable_uid()
    first = message(A, 1 if ids else None, "durable", uid=uid)
    again = message(A, 2 if ids else None, "durable", uid=uid)  # the drain published it once more
    if way == "live":
        assert box.take_live(first, socket.write) is True
    elif way == "waiting":
        assert box.take_live(first, None) is False
        assert drain(box) == [first]
    else:
        assert list(box.fresh([first])) == [first]
    assert box.take_live(again, socket.write) is True
    box.take_live(again, None)  # without a direct writer it waits, and is skipped then
    assert drain(box) == []
    assert list(box.fresh([again])) == []
    assert socket.frames == ([server_frame(b"durable")] if way == "live" else [])
    if ids:  # the repeat moved its channel on: a catch-up or a resume does not bring it back
        assert box.position(A) == (NOW, 2)


def test_a_stored_durable_message_from_before_the_arrival_is_known_by_its_uid():
    box, socket, uid = outbox(A, arrived_ms=NOW), Socket(), new_durable_uid()
    stored = message(A, 1, "durable", ms=NOW - 60_000, uid=uid)  # older than the arrival: not a position
    assert list(box.fresh([stored])) == [stored]
    assert box.take_live(message(A, 2, "durable", ms=NOW + 5, uid=uid), socket.write) is True  # a drain's copy
    assert socket.frames == []


def test_a_stored_multi_channel_message_from_before_the_arrival_is_handed_out_once():
    box, uid = outbox(A, B, arrived_ms=NOW), new_uid()
    copies = [message(A, 1, "both", ms=NOW - 60_000, uid=uid), message(B, 1, "both", ms=NOW - 60_000, uid=uid)]
    assert list(box.fresh(copies)) == copies[:1]


def test_a_durable_message_the_socket_refused_is_not_remembered_and_goes_out_once_later():
    box, uid = outbox(A), new_durable_uid()
    durable = message(A, None, "durable", uid=uid)
    assert box.take_live(durable, Socket(takes=False).write) is False
    assert box.take_live(message(A, None, "durable", uid=uid), None) is False  # published again meanwhile
    assert [m.payload for m in drain(box)] == [b"durable"]


def test_a_resuming_client_keeps_the_uid_of_a_durable_message_in_its_token():
    before, socket, uid = outbox(A, with_ids=True, arrived_ms=NOW - 1000), Socket(), new_durable_uid()
    before.take_live(message(A, 1, "durable", uid=uid), socket.write)
    token, _, _ = unframe(socket.frames[-1]).partition(b"\n")
    assert decode_token(token.decode()).uids == (uid,)
    after = outbox(A, resume=token.decode(), arrived_ms=NOW + 1000)
    assert after.opening(NOW + 1000) is Opening.BACKLOG
    backlog = [message(A, 2, "durable", uid=uid), message(A, 3, "next")]  # published again after it left
    assert list(after.fresh(backlog)) == [message(A, 3, "next")]


@pytest.mark.parametrize(("others", "sent_again"), [(RECENT_UIDS - 1, False), (RECENT_UIDS, True)])
def test_a_durable_message_published_again_after_recent_uids_others_is_sent_again(others, sent_again):
    box, socket, uid = outbox(A), Socket(), new_durable_uid()
    box.take_live(message(A, None, "first", uid=uid), socket.write)
    for _ in range(others):
        box.take_live(message(A, None, uid=new_durable_uid()), socket.write)
    box.take_live(message(A, None, "again", uid=uid), socket.write)
    assert (socket.frames[-1] == server_frame(b"again")) is sent_again


def test_messages_without_a_uid_stay_on_the_fast_path_after_durable_ones(monkeypatch):
    box, socket = outbox(A), Socket()
    box.take_live(message(A, 1, uid=new_durable_uid()), socket.write)
    box.take_live(message(A, 2), socket.write)

    def slow(*args):
        raise AssertionError("a message without uid left the fast path")

    for name in ("_seen", "_record", "_unrecord", "_advance"):
        monkeypatch.setattr(Outbox, name, slow)
    assert box.take_live(message(A, 3), socket.write) is True
    assert box.take_live(message(A, 3), socket.write) is True  # a repeat, by its position
    assert len(socket.frames) == 3


def test_a_uid_of_a_multi_channel_message_is_still_not_kept_on_one_channel():
    box, socket = outbox(A), Socket()
    box.take_live(message(A, None, "no id", uid=new_uid()), socket.write)
    box.take_live(message(A, 1, "with id", uid=new_uid()), socket.write)
    assert decode_token(box.token()).uids == ()
    assert len(socket.frames) == 2


# -- raw publishes, without id -----------------------------------------------------------


def test_messages_without_an_id_are_never_held_back():
    box, socket = outbox(A), Socket()
    box.take_live(message(A, 5), socket.write)
    raw = message(A, None, "raw from another program")
    assert box.take_live(raw, socket.write) is True
    assert box.take_live(raw, socket.write) is True
    assert list(box.fresh([raw, raw])) == [raw, raw]
    box.take_live(raw, None)
    box.take_live(raw, None)
    assert drain(box) == [raw, raw]
    assert socket.frames[1:] == [server_frame(raw.payload)] * 2


def test_a_raw_message_to_a_resuming_client_carries_the_current_token_unchanged():
    box, socket = outbox(A, B, with_ids=True, arrived_ms=NOW - 5), Socket()
    box.take_live(message(A, 1), socket.write)
    token = box.token()
    box.take_live(message(B, None, "raw"), socket.write)
    assert socket.frames[-1] == server_frame(token.encode() + b"\nraw")
    assert box.token() == token


# -- echo -------------------------------------------------------------------------------


def test_my_own_message_comes_back_only_with_echo():
    socket = Socket()
    assert outbox(A, origin="me").take_live(message(A, 1, origin="me"), socket.write) is True
    assert socket.frames == []
    assert outbox(A, origin="me", echo=True).take_live(message(A, 1, origin="me"), socket.write) is True
    assert outbox(A, origin="me").take_live(message(A, 2, origin="you"), socket.write) is True
    assert socket.frames == [server_frame(b"m1"), server_frame(b"m2")]


# -- the bounded inbox ------------------------------------------------------------------


def test_past_max_pending_the_websocket_overflows_and_gets_nothing_more():
    box = outbox(A, max_pending=3)
    for n in range(1, 5):
        box.take_live(message(A, n), None)
    assert box.overflowed
    assert box.next() is None  # not worth sending: it is closed
    assert box.take_live(message(A, 9), Socket().write) is False  # no fast path either


def test_max_pending_waiting_messages_are_not_an_overflow():
    box = outbox(A, max_pending=3)
    for n in range(1, 4):
        box.take_live(message(A, n), None)
    assert not box.overflowed
    assert len(drain(box)) == 3


# -- the catch-up gate ------------------------------------------------------------------


def test_while_a_catch_up_is_owed_or_under_way_live_messages_wait_behind_it():
    box, socket = outbox(A, B, arrived_ms=NOW - 5), Socket()
    box.owe_catch_up()
    assert box.take_live(message(A, 5), socket.write) is False
    since = box.begin_catch_up()
    assert box.take_live(message(B, 6), socket.write) is False
    assert list(box.fresh([message(A, 3), message(B, 4), message(A, 5)])) == [message(A, 3), message(B, 4), message(A, 5)]
    box.end_catch_up(complete=True)
    assert socket.frames == []
    assert drain(box) == [message(B, 6)]  # A 5 came from history, once
    assert box.take_live(message(A, 7), socket.write) is True
    assert since == {A: (NOW - 5, 0), B: (NOW - 5, 0)}


def test_a_catch_up_redis_refused_is_owed_again():
    box = outbox(A)
    box.owe_catch_up()
    box.begin_catch_up()
    box.end_catch_up(complete=False)
    assert box.catch_up_owed
    assert box.take_live(message(A, 1), Socket().write) is False


def test_a_catch_up_asked_for_while_one_runs_follows_it():
    box = outbox(A)
    box.owe_catch_up()
    box.begin_catch_up()
    box.owe_catch_up()  # the hub subscribed again meanwhile
    box.end_catch_up(complete=True)
    assert box.catch_up_owed


def test_a_catch_up_starts_after_the_last_handed_out_else_the_resumed_position_else_arrival():
    token = encode_token([(A, (NOW - 100, 3)), (B, (NOW - 200, 4))])  # C: not in the token
    box = outbox(A, B, C, resume=token, arrived_ms=NOW - 5)
    box.opening(NOW)
    assert box.begin_catch_up() == {A: (NOW - 100, 3), B: (NOW - 200, 4), C: (NOW - 5, 0)}
    assert list(box.fresh([message(A, 7)])) == [message(A, 7)]
    box.end_catch_up(complete=True)
    box.owe_catch_up()
    assert box.begin_catch_up() == {A: (NOW, 7), B: (NOW - 200, 4), C: (NOW - 5, 0)}


# -- the opening --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, {"with_ids": True}, {"resume": ""}, {"with_ids": True, "resume": ""}], ids=["plain", "ids", "empty", "fresh"]
)
def test_a_client_that_resumes_from_nothing_gets_the_stored_messages(kwargs):
    box = outbox(A, B, arrived_ms=NOW - 5, **kwargs)
    assert box.opening(NOW) is Opening.STORED
    assert not box.catch_up_owed and not box.gap_owed
    assert box.positions() == {A: (NOW - 5, 0), B: (NOW - 5, 0)}


def test_a_valid_token_opens_with_the_backlog_after_its_positions():
    box = outbox(A, B, resume=encode_token([(A, (NOW - 1000, 2)), (B, (NOW - 10, 0))]), arrived_ms=NOW)
    assert box.opening(NOW) is Opening.BACKLOG
    assert box.with_ids
    assert box.catch_up_owed  # sent by the loop's first turn
    assert not box.gap_owed
    assert box.positions() == {A: (NOW - 1000, 2), B: (NOW - 10, 0)}


def test_a_token_of_an_earlier_version_opens_with_the_backlog_after_that_position_on_every_channel():
    box = outbox(A, B, C, resume=f"{NOW - 1000}-3", arrived_ms=NOW)
    assert box.opening(NOW) is Opening.BACKLOG
    assert box.begin_catch_up() == {A: (NOW - 1000, 3), B: (NOW - 1000, 3), C: (NOW - 1000, 3)}


@pytest.mark.parametrize(
    ("ahead", "opening"), [(MAX_ID_AHEAD_MS, Opening.BACKLOG), (MAX_ID_AHEAD_MS + 1, Opening.GAP)], ids=["plausible", "ahead"]
)
def test_a_position_far_ahead_of_redis_clock_opens_with_a_gap(ahead, opening):
    token = encode_token([(A, (NOW + ahead, 0)), (B, (NOW - 10, 0))])  # one implausible channel is enough
    box = outbox(A, B, resume=token, arrived_ms=NOW)
    assert box.opening(NOW) is opening
    if opening is Opening.GAP:
        assert box.resume is None and box.with_ids  # from now on a fresh resuming client
        assert not box.catch_up_owed
        assert box.positions() == {A: (NOW, 0), B: (NOW, 0)}


def test_a_legacy_token_far_ahead_of_redis_clock_opens_with_a_gap():
    assert outbox(A, resume=f"{NOW + MAX_ID_AHEAD_MS + 1}-0").opening(NOW) is Opening.GAP


def test_channels_whose_tags_collide_cannot_take_a_position_from_the_token_and_a_gap_is_owed(monkeypatch):
    tag = positions.channel_tag
    monkeypatch.setattr(positions, "channel_tag", lambda channel: "same" if channel in (A, B) else tag(channel))
    token = encode_token([(A, (NOW - 100, 1)), (B, (NOW - 50, 2)), (C, (NOW - 10, 3))])
    box = outbox(A, B, C, resume=token, arrived_ms=NOW)
    assert box.opening(NOW) is Opening.BACKLOG
    assert box.gap_owed
    assert box.begin_catch_up() == {A: (NOW, 0), B: (NOW, 0), C: (NOW - 10, 3)}


def test_a_token_without_collisions_owes_no_gap():
    box = outbox(A, B, C, resume=encode_token([(A, (NOW - 100, 1)), (B, (NOW - 50, 2))]), arrived_ms=NOW)
    box.opening(NOW)
    assert not box.gap_owed


# -- the gap before a backlog ------------------------------------------------------------


@pytest.mark.parametrize(
    ("owed", "history_gap", "told"),
    [(True, False, True), (False, True, True), (True, True, True), (False, False, False)],
    ids=["owed-by-the-token", "in-history", "both-told-as-one", "neither"],
)
def test_a_resuming_client_is_told_of_a_gap_owed_or_in_history(owed, history_gap, told):
    box = outbox(A, with_ids=True)
    box.gap_owed = owed
    assert box.take_gap(history_gap=history_gap) is told
    assert not box.gap_owed


def test_a_gap_owed_is_told_only_once():
    box = outbox(A, with_ids=True)
    box.gap_owed = True
    assert box.take_gap(history_gap=False) is True
    assert box.take_gap(history_gap=False) is False


def test_a_plain_client_is_never_told_of_a_gap_but_the_gap_is_cleared():
    box = outbox(A)
    box.gap_owed = True
    assert box.take_gap(history_gap=True) is False
    assert not box.gap_owed


# -- framing ------------------------------------------------------------------------------


def test_a_resuming_client_gets_every_message_behind_its_token_and_a_plain_one_the_payload():
    resuming, plain, socket = outbox(A, with_ids=True), outbox(A), Socket()
    resuming.take_live(message(A, 1, binary=True), socket.write)
    plain.take_live(message(A, 2), socket.write)
    assert socket.frames == [server_frame(encode_token([(A, (NOW, 1))]).encode() + b"\nm1", True), server_frame(b"m2")]
    assert plain.payload(message(A, 3)) == b"m3"


def test_the_gap_notice_goes_to_resuming_clients_only():
    assert outbox(A, with_ids=True).gap_notice() == GAP_NOTICE == b"!gap\n"
    assert outbox(A).gap_notice() is None  # a plain ws4redis client would take it for a message


def test_the_token_in_each_frame_says_exactly_what_was_handed_out_up_to_it():
    """A client resumes on three channels; every way a message reaches it, every frame's token is checked."""
    uid = new_uid()
    box = outbox(A, B, C, resume=encode_token([(A, (NOW - 1000, 0)), (B, (NOW - 900, 2))]), arrived_ms=NOW)
    socket = Socket()

    def loop_sends(messages):  # as the loop does: each payload right after the message was handed out
        for m in messages:
            socket.frames.append(server_frame(box.payload(m), m.binary))

    def loop_drains():
        while (m := box.next()) is not None:
            loop_sends([m])

    assert box.opening(NOW) is Opening.BACKLOG
    box.take_live(message(A, 1, "live during the backlog", ms=NOW + 1), socket.write)
    assert box.begin_catch_up() == {A: (NOW - 1000, 0), B: (NOW - 900, 2), C: (NOW, 0)}
    history = [
        message(A, 0, "a1", ms=NOW - 950),
        message(B, 2, "already had", ms=NOW - 900),
        message(B, 0, "to both", ms=NOW - 800, uid=uid),
        message(A, 5, "to both", ms=NOW - 700, uid=uid),  # the copy: skipped, A moves on
        message(A, 0, "a2", ms=NOW - 600),
    ]
    loop_sends(box.fresh(history))
    box.end_catch_up(complete=True)
    loop_drains()
    box.take_live(message(C, 0, "fast", ms=NOW + 2), socket.write)
    socket.takes = False
    box.take_live(message(B, 0, "refused", ms=NOW + 3), socket.write)
    socket.takes = True
    box.take_live(message(C, 0, "behind it", ms=NOW + 4), socket.write)
    loop_drains()
    box.take_live(message(C, None, "raw"), socket.write)
    frames = [unframe(f) for f in socket.frames]  # the hub's direct writes and the loop's, in order

    a1, b1, a2 = (NOW - 950, 0), (NOW - 800, 0), (NOW - 600, 0)
    arrival = (NOW, 0)
    assert [read(f) for f in frames] == [
        ({A: a1, B: (NOW - 900, 2), C: arrival}, b"a1"),
        ({A: a1, B: b1, C: arrival}, b"to both"),
        ({A: a2, B: b1, C: arrival}, b"a2"),
        ({A: (NOW + 1, 1), B: b1, C: arrival}, b"live during the backlog"),
        ({A: (NOW + 1, 1), B: b1, C: (NOW + 2, 0)}, b"fast"),
        ({A: (NOW + 1, 1), B: (NOW + 3, 0), C: (NOW + 2, 0)}, b"refused"),
        ({A: (NOW + 1, 1), B: (NOW + 3, 0), C: (NOW + 4, 0)}, b"behind it"),
        ({A: (NOW + 1, 1), B: (NOW + 3, 0), C: (NOW + 4, 0)}, b"raw"),
    ]
    assert [decode_token(f.partition(b"\n")[0].decode()).uids for f in frames] == [()] + [(uid,)] * 7


def test_a_stored_message_from_before_the_arrival_does_not_move_the_position_back():
    box = outbox(A, with_ids=True, arrived_ms=NOW)
    stored = message(A, 0, "stored", ms=NOW - 60_000)
    assert [m.payload for m in box.fresh([stored])] == [b"stored"]
    # A catch-up (after an outage) or a resume starts at the arrival, not at the stored
    # message: what was published between them with expire=0 is not owed to a new client.
    assert box.position(A) == (NOW, 0)
    assert decode_token(box.token()).positions([A])[0] == {A: (NOW, 0)}
    newer = message(A, 1, "stored later", ms=NOW + 5)  # stored after the arrival: recorded
    assert list(box.fresh([newer])) == [newer]
    assert box.position(A) == (NOW + 5, 1)
    assert list(box.fresh([newer])) == []  # and not handed out twice


@pytest.mark.parametrize("with_ids", [False, True])
@pytest.mark.parametrize("socket_takes", [True, False])
def test_the_live_copy_of_a_stored_message_from_before_the_arrival_is_a_repeat(with_ids, socket_takes):
    # The arrival is Redis's clock as this worker estimates it, a few ms off at worst: a message
    # published right after the websocket subscribed can carry an id before it, and then come
    # both as the stored message and live (found by two vassals sharing one Redis).
    box = outbox(A, with_ids=with_ids, arrived_ms=NOW)
    just_before = message(A, 0, "published as it opened", ms=NOW - 3)
    assert list(box.fresh([just_before])) == [just_before]
    socket = Socket(takes=socket_takes)
    assert box.take_live(just_before, socket.write) is True
    assert socket.frames == [] and drain(box) == []
    # What comes next is handed out; the catch-up and the token still start at the arrival.
    assert box.position(A) == (NOW, 0)
    later = message(A, 1, "later", ms=NOW - 1)
    box.take_live(later, socket.write)
    sent = [unframe(f) for f in socket.frames] + [box.payload(m) for m in drain(box)]
    assert sent == [box.payload(later)]
    assert sent[0].endswith(b"later") and sent[0].startswith(b"later") is not with_ids
