"""The server hands its loop's wake-up to a subscriber through one method (RedisSubscriber.attach)."""

from __future__ import annotations

import gc
import weakref

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

        def write(self, frame: bytes) -> bool:
            return True

    subscriber = RedisSubscriber()
    loop = Loop()
    subscriber.attach(loop.wake)
    subscriber.enable_fast_path(loop.write)
    gone = weakref.ref(loop)
    gc.disable()
    try:
        subscriber.release()
        del loop
        assert gone() is None
    finally:
        gc.enable()
    subscriber.resync()  # a late wake-up goes nowhere
