"""What a hub link sends to Redis when channels come and go: only the change, never the whole set again."""

from __future__ import annotations

from collections.abc import Iterable

from ws4redis_uwsgi.bus.hub import SUBSCRIBE_INTERVAL, SubscriptionHub, _Link
from ws4redis_uwsgi.bus.shards import SingleShard
from ws4redis_uwsgi.bus.subscription import Reply


class RecordingPubSub:
    """The link's subscription (ws4redis_uwsgi.bus.subscription), recording what it is asked to send."""

    def __init__(self, reads_stored: bool = False) -> None:
        self.sent: list[tuple[str, tuple[str, ...]]] = []
        self.reads_stored = reads_stored

    def subscribe(self, channels: Iterable[str], read_stored: bool = False) -> None:
        self.sent.append(("SUBSCRIBE+MGET" if read_stored else "SUBSCRIBE", tuple(channels)))

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


class Quiet:
    """A listener that takes what the hub hands it and keeps nothing."""

    def deliver(self, message) -> None:
        pass

    def resync(self) -> None:
        pass


def test_a_new_channels_stored_message_read_with_its_subscription_is_kept_unless_a_message_passed_first() -> None:
    one, pubsub = link(), RecordingPubSub(reads_stored=True)
    hub = one.hub
    for channel in ("quiet", "busy"):
        hub._listeners[channel] = {Quiet()}  # what add() does, without starting the link's loop
        hub._route[channel] = one
        one.want(channel)
    one._sync(pubsub, read_stored=True)
    assert pubsub.sent == [("SUBSCRIBE+MGET", ("busy", "quiet"))]
    for channel in ("quiet", "busy"):
        one._handle(Reply("subscribe", channel, 1))
    one._handle(Reply("message", "busy", b"new"))  # published after the SUBSCRIBE, before the MGET ran
    one._handle(Reply("stored", "quiet", b"Q"))
    one._handle(Reply("stored", "busy", b"old"))
    assert one.reading == {}
    quiet = hub.preread("quiet")
    assert quiet is not None and quiet[1] == b"Q" and quiet[0] == hub.stamp("quiet")
    assert hub.preread("quiet") is None  # handed over once
    assert hub.preread("busy") is None  # what was read may be older than the message


def test_nothing_is_read_with_subscriptions_the_connection_cannot_read_with_or_at_a_reconnect() -> None:
    one = link()
    one.want("a")
    one._sync(RecordingPubSub(reads_stored=False), read_stored=True)
    one.want("b")
    reading = RecordingPubSub(reads_stored=True)
    one._sync(reading)  # a (re)connection's first sync: no handshake waits to read
    assert reading.sent == [("SUBSCRIBE", ("b",))] and one.reading == {}


class PingingPubSub(RecordingPubSub):
    def ping(self) -> None:
        self.sent.append(("PING", ()))


def test_a_settling_handshake_is_let_go_by_the_answer_to_its_own_ping_not_an_earlier_one() -> None:
    """Redis answers a connection's PINGs in order: the keep-alive's answer, already on its way, releases nobody."""
    one, pubsub = link(), PingingPubSub()
    one._ping(pubsub, None)  # the keep-alive's, before the handshake asked
    event = one.settle()
    events, one._barriers = one._barriers, []  # what the link's loop does next (it would also be started by wake())
    one._ping(pubsub, events)
    assert pubsub.sent == [("PING", ()), ("PING", ())]
    one._handle(Reply("pong", None, None))  # RESP3's answer
    assert not event.is_set()
    one._handle(Reply("pong", "", None))  # RESP2's, on a subscribed connection
    assert event.is_set()
    one.close()  # (settle woke the link: its loop never connects here)


def test_a_lost_connection_lets_every_settling_handshake_go() -> None:
    one, pubsub = link(), PingingPubSub()
    waiting, sent = one.settle(), one.settle()
    events, one._barriers = one._barriers[1:], one._barriers[:1]
    one._ping(pubsub, events)
    one._on_disconnect(None)
    assert waiting.is_set() and sent.is_set()
    one.close()


def test_what_changes_right_after_a_sync_that_sent_is_held_a_moment_and_the_first_after_a_quiet_while_is_not() -> None:
    """SUBSCRIBE_INTERVAL: a burst's new channels go out together; a lone handshake's at once."""
    one, pubsub = link(), RecordingPubSub()
    one.want("a")
    assert one._hold() == 0  # nothing sent before: at once
    one._sync(pubsub)
    assert one._hold() == 0  # nothing changed since
    one.want("b")
    assert 0 < one._hold() <= SUBSCRIBE_INTERVAL
    one._sent_at -= SUBSCRIBE_INTERVAL  # a quiet while
    assert one._hold() == 0
    one._sync(pubsub)
    one.unwant("a")  # leaving is held too: it goes with what comes next
    assert one._hold() > 0
    assert pubsub.sent == [("SUBSCRIBE", ("a",)), ("SUBSCRIBE", ("b",))]
