"""The delivery rules of one websocket (ws4redis_uwsgi.outbox): messages in, frames and decisions out, no I/O."""

from __future__ import annotations

import pytest

from ws4redis_uwsgi.core.envelope import MAX_ID_AHEAD_MS, BusMessage
from ws4redis_uwsgi.core.frames import server_frame
from ws4redis_uwsgi.core.outbox import GAP_NOTICE, Opening, Outbox

NOW = 1_700_000_000_000


def message(n: int | None, text: str = "", origin: str | None = None, binary: bool = False) -> BusMessage:
    return BusMessage((text or f"m{n}").encode(), binary, origin, None if n is None else f"{NOW}-{n}")


class Socket:
    """A socket that takes frames at once (or refuses them, as a full one does)."""

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> bool:
        if self.takes:
            self.frames.append(frame)
        return self.takes


def drain(outbox: Outbox) -> list[BusMessage]:
    sent = []
    while (m := outbox.next()) is not None:
        sent.append(m)
    return sent


# -- the fast path ------------------------------------------------------------------


def test_a_live_message_is_written_at_once_when_nothing_waits():
    outbox, socket = Outbox(), Socket()
    assert outbox.take_live(message(1), socket.write) is True
    assert socket.frames == [server_frame(b"m1")]
    assert outbox.next() is None


def test_without_a_direct_writer_a_live_message_waits_for_the_loop():
    outbox = Outbox()
    assert outbox.take_live(message(1), None) is False
    assert drain(outbox) == [message(1)]


def test_a_socket_that_cannot_take_it_now_makes_the_message_wait_and_the_next_ones_behind_it():
    outbox, socket = Outbox(), Socket(takes=False)
    assert outbox.take_live(message(1), socket.write) is False
    socket.takes = True
    assert outbox.take_live(message(2), socket.write) is False  # not before the one that waits
    assert socket.frames == []
    assert drain(outbox) == [message(1), message(2)]
    assert outbox.take_live(message(3), socket.write) is True  # nothing waits any more


# -- one message once -----------------------------------------------------------------


def test_a_message_on_two_of_my_channels_is_written_once():
    outbox, socket = Outbox(), Socket()
    outbox.take_live(message(1), socket.write)
    assert outbox.take_live(message(1), socket.write) is True
    assert len(socket.frames) == 1


def test_a_repeat_is_skipped_when_the_inbox_drains():
    outbox = Outbox()
    for n in (1, 2, 2, 1, 3):
        outbox.take_live(message(n), None)
    assert drain(outbox) == [message(1), message(2), message(3)]


def test_messages_without_an_id_are_never_held_back():
    outbox, socket = Outbox(), Socket()
    outbox.take_live(message(5), socket.write)
    raw = BusMessage(b"raw from another program")
    assert outbox.take_live(raw, socket.write) is True
    assert outbox.take_live(raw, socket.write) is True
    assert socket.frames[1:] == [server_frame(raw.payload)] * 2


def test_stored_and_history_messages_skip_what_was_handed_out_and_record_the_rest():
    outbox, socket = Outbox(), Socket()
    outbox.take_live(message(2), socket.write)
    assert outbox.fresh([message(1), message(2), message(3)]) == [message(3)]
    assert outbox.take_live(message(3), socket.write) is True and len(socket.frames) == 1
    assert outbox.last_id == f"{NOW}-3"


# -- echo -------------------------------------------------------------------------------


def test_my_own_message_comes_back_only_with_echo():
    socket = Socket()
    assert Outbox(origin="me").take_live(message(1, origin="me"), socket.write) is True
    assert socket.frames == []
    assert Outbox(origin="me", echo=True).take_live(message(1, origin="me"), socket.write) is True
    assert Outbox(origin="me").take_live(message(2, origin="you"), socket.write) is True
    assert len(socket.frames) == 2


# -- the bounded inbox ------------------------------------------------------------------


def test_past_max_pending_the_websocket_overflows_and_gets_nothing_more():
    outbox = Outbox(max_pending=3)
    for n in range(1, 5):
        outbox.take_live(message(n), None)
    assert outbox.overflowed
    assert outbox.next() is None  # not worth sending: it is closed
    assert outbox.take_live(message(9), Socket().write) is False  # no fast path either


def test_max_pending_waiting_messages_are_not_an_overflow():
    outbox = Outbox(max_pending=3)
    for n in range(1, 4):
        outbox.take_live(message(n), None)
    assert not outbox.overflowed
    assert len(drain(outbox)) == 3


# -- the catch-up gate ------------------------------------------------------------------


def test_while_a_catch_up_is_owed_or_under_way_live_messages_wait_behind_it():
    outbox, socket = Outbox(), Socket()
    outbox.owe_catch_up()
    assert outbox.take_live(message(5), socket.write) is False
    since = outbox.begin_catch_up()
    assert outbox.take_live(message(6), socket.write) is False
    assert outbox.fresh([message(3), message(4), message(5)]) == [message(3), message(4), message(5)]
    outbox.end_catch_up(complete=True)
    assert socket.frames == []
    assert drain(outbox) == [message(6)]  # 5 came from history, once
    assert outbox.take_live(message(7), socket.write) is True
    assert since == f"{outbox.arrived_ms}-0"


def test_a_catch_up_redis_refused_is_owed_again():
    outbox = Outbox()
    outbox.owe_catch_up()
    outbox.begin_catch_up()
    outbox.end_catch_up(complete=False)
    assert outbox.catch_up_owed
    assert outbox.take_live(message(1), Socket().write) is False


def test_a_catch_up_asked_for_while_one_runs_follows_it():
    outbox = Outbox()
    outbox.owe_catch_up()
    outbox.begin_catch_up()
    outbox.owe_catch_up()  # the hub subscribed again meanwhile
    outbox.end_catch_up(complete=True)
    assert outbox.catch_up_owed


@pytest.mark.parametrize(
    ("handed_out", "resume_from", "position"),
    [
        (None, None, f"{NOW - 5}-0"),  # nothing yet: from when it arrived
        (None, f"{NOW - 100}-3", f"{NOW - 100}-3"),  # the id it resumed from
        (7, f"{NOW - 100}-3", f"{NOW}-7"),  # the last it got
    ],
)
def test_a_catch_up_starts_after_the_last_message_handed_out(handed_out, resume_from, position):
    outbox = Outbox(resume_from=resume_from, arrived_ms=NOW - 5)
    if handed_out is not None:
        outbox.fresh([message(handed_out)])
    assert outbox.position == position


# -- the opening --------------------------------------------------------------------------


def test_the_opening_stored_messages_backlog_or_gap():
    assert Outbox().opening(NOW) is Opening.STORED
    assert Outbox(with_ids=True).opening(NOW) is Opening.STORED
    resuming = Outbox(resume_from=f"{NOW - 1000}-0")
    assert resuming.opening(NOW) is Opening.BACKLOG
    assert resuming.catch_up_owed  # sent by the loop's first turn
    from_the_future = Outbox(resume_from=f"{NOW + MAX_ID_AHEAD_MS + 1}-0")
    assert from_the_future.opening(NOW) is Opening.GAP
    assert from_the_future.resume_from is None and from_the_future.with_ids and not from_the_future.catch_up_owed


# -- framing ------------------------------------------------------------------------------


def test_a_resuming_client_gets_every_message_behind_its_id_and_a_plain_one_the_payload():
    resuming, plain, socket = Outbox(with_ids=True), Outbox(), Socket()
    resuming.take_live(message(1, binary=True), socket.write)
    plain.take_live(message(2), socket.write)
    assert socket.frames == [server_frame(f"{NOW}-1\nm1".encode(), True), server_frame(b"m2")]
    assert resuming.payload(message(3)) == f"{NOW}-3\nm3".encode()
    assert resuming.payload(BusMessage(b"raw")) == b"\nraw"
    assert plain.payload(message(3)) == b"m3"
    assert resuming.gap_notice() == GAP_NOTICE == b"!gap\n"
    assert plain.gap_notice() is None  # a plain ws4redis client would take it for a message
