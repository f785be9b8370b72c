"""What a hub link sends to Redis when channels come and go: only the change, never the whole set again."""

from __future__ import annotations

from collections.abc import Iterable

from ws4redis_uwsgi.bus.hub import SubscriptionHub, _Link
from ws4redis_uwsgi.bus.shards import SingleShard


class RecordingPubSub:
    """The link's subscription (ws4redis_uwsgi.bus.subscription), recording what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...]]] = []

    def subscribe(self, channels: Iterable[str]) -> None:
        self.sent.append(("SUBSCRIBE", tuple(channels)))

    def unsubscribe(self, channels: Iterable[str]) -> None:
        self.sent.append(("UNSUBSCRIBE", tuple(channels)))


def link() -> _Link:
    shards = SingleShard(lambda: None)  # type: ignore[arg-type,return-value] # no connection is opened here
    return _Link(SubscriptionHub(shards), "redis", shards)


def test_sync_subscribes_only_channels_that_are_new() -> None:
    one, pubsub = link(), RecordingPubSub()
    one.want("a")
    one.want("b")
    one._sync(pubsub)
    one.want("c")
    one._sync(pubsub)
    assert pubsub.sent == [("SUBSCRIBE", ("a", "b")), ("SUBSCRIBE", ("c",))]


def test_sync_unsubscribes_only_channels_that_left_and_sends_nothing_without_a_change() -> None:
    one, pubsub = link(), RecordingPubSub()
    for channel in "abc":
        one.want(channel)
    one._sync(pubsub)
    one.unwant("b")
    one._sync(pubsub)
    one._sync(pubsub)
    assert pubsub.sent[1:] == [("UNSUBSCRIBE", ("b",))]
    assert one.subscribed == {"a", "c"}


def test_a_channel_left_and_taken_again_before_a_sync_sends_nothing() -> None:
    one, pubsub = link(), RecordingPubSub()
    one.want("a")
    one._sync(pubsub)
    one.unwant("a")
    one.want("a")
    one._sync(pubsub)
    assert pubsub.sent == [("SUBSCRIBE", ("a",))]


def test_after_a_lost_connection_the_next_sync_subscribes_every_wanted_channel() -> None:
    one, pubsub = link(), RecordingPubSub()
    one.want("a")
    one.want("b")
    one._sync(pubsub)
    one._on_disconnect(None)
    one._sync(pubsub)
    assert pubsub.sent == [("SUBSCRIBE", ("a", "b")), ("SUBSCRIBE", ("a", "b"))]


def test_channels_that_come_and_go_while_unsubscribed_leave_nothing_to_sync() -> None:
    """As during a Redis outage: every channel a visitor took and left would otherwise wait for the next connection."""
    one, pubsub = link(), RecordingPubSub()
    one.want("stays")
    for i in range(200):
        one.want(f"visit:{i}")
        one.unwant(f"visit:{i}")
    assert one._changed == {"stays"}
    one._sync(pubsub)
    assert pubsub.sent == [("SUBSCRIBE", ("stays",))]
