"""The server hands its loop's wake-up to a subscriber through one method (RedisSubscriber.attach)."""

from __future__ import annotations

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
