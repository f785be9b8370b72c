"""The server hands its loop's wake-up to a subscriber through one method (RedisSubscriber.attach)."""

from __future__ import annotations

import gc
import weakref

from django.test import override_settings

from ws4redis_uwsgi.core.envelope import BusMessage
from ws4redis_uwsgi.subscriber import RedisSubscriber


def test_attach_makes_a_resync_and_an_ended_session_wake_the_loop():
    subscriber = RedisSubscriber()
    woken: list[str] = []
    subscriber.attach(lambda: woken.append("wake"))
    subscriber.resync()
    subscriber.end_session()
    assert woken == ["wake", "wake"]


def test_a_subclass_reading_notify_calls_what_was_attached():
    def wake() -> None:
        pass

    subscriber = RedisSubscriber()
    subscriber.attach(wake)
    assert subscriber.notify is wake


def test_before_attach_a_wake_up_goes_nowhere():
    RedisSubscriber().resync()  # no loop yet: nothing to wake, nothing raised


def test_a_released_subscriber_lets_go_of_the_loop_and_the_socket_it_wrote_to():
    """Both refer back to the session that holds the subscriber: kept, that is a cycle per ended websocket.

    Freed by reference counting instead, an ended websocket's objects go at once, not at the
    next full garbage collection (which walks all of them until then).
    """

    class Loop:
        def wake(self) -> None:
            pass

        def try_write(self, frame: bytes) -> bool:
            return True

        def give_up(self) -> None:
            pass

    subscriber = RedisSubscriber()
    loop = Loop()
    subscriber.attach(loop.wake)
    subscriber.enable_fast_path(loop)
    gone = weakref.ref(loop)
    gc.disable()
    try:
        subscriber.release()
        del loop
        assert gone() is None
    finally:
        gc.enable()
    subscriber.resync()  # a late wake-up goes nowhere


class Socket:
    """A socket whose client reads nothing: every direct write fails; records what the subscriber asks of it."""

    def __init__(self) -> None:
        self.given_up = 0

    def try_write(self, frame: bytes) -> bool:
        return False

    def give_up(self) -> None:
        self.given_up += 1


@override_settings(WS4REDIS_MAX_PENDING_MESSAGES=3)
def test_a_client_that_falls_too_far_behind_is_given_up_on_by_its_socket_not_only_by_its_next_turn():
    """The loop's turn may be waiting on a write to that client: only the socket can end that wait now."""
    subscriber = RedisSubscriber()
    woken: list[str] = []
    subscriber.attach(lambda: woken.append("wake"))
    socket = Socket()
    subscriber.enable_fast_path(socket)
    for n in range(3):
        subscriber.deliver(BusMessage(b"m%d" % n, channel="channel"))
    assert socket.given_up == 0 and not subscriber.outbox.overflowed  # 3 may wait
    subscriber.deliver(BusMessage(b"m3", channel="channel"))
    assert subscriber.outbox.overflowed
    assert socket.given_up == 1
    assert len(woken) == 4  # and the loop is woken, to close it once its turn is over
    subscriber.release()
