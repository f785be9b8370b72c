"""The hub's loop over a channel's listeners: the C loop does what the Python loop does, case by case.

Every test runs on both loops (``loop`` fixture) with real sockets (socket
pairs), real subscribers, outboxes and RawSockets, and checks what a client
receives and what the websocket's state is afterwards. The last test plays
random sequences through both and compares everything.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from ws4redis_uwsgi.bus import fanout
from ws4redis_uwsgi.core.envelope import BusMessage
from ws4redis_uwsgi.core.throttle import Throttle
from ws4redis_uwsgi.server.sockets import RawSocket
from ws4redis_uwsgi.subscriber import RedisSubscriber

Loop = Callable[[tuple[Any, ...], BusMessage], None]

LOOPS = {"python": fanout.deliver_each}
if fanout._fanout is not None:
    LOOPS["c"] = fanout._fanout.deliver_all


def test_the_loop_in_c_was_built_and_is_the_one_the_hub_uses():
    """The install compiles it (setup.py); without it every delivery costs the Python loop's time."""
    assert fanout.IN_C, "ws4redis_uwsgi/bus/_fanout.c was not built: is a C compiler installed?"
    assert fanout.deliver_all is fanout._fanout.deliver_all


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Loop:
    return LOOPS[request.param]


class Client:
    """One websocket: a subscriber writing through a RawSocket to one end of a socket pair; the test reads the other."""

    def __init__(
        self, subscriber: RedisSubscriber | None = None, *, resume: str | None = None, echo: bool = False, origin: str = ""
    ) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.subscriber = subscriber or RedisSubscriber()
        self.subscriber._origin = origin or f"origin-{id(self)}"
        self.subscriber.configure(echo=echo, resume=resume)
        self.subscriber.outbox.channels = ("ch",)
        self.subscriber.outbox.arrived_ms = 1600000000000  # the same in every run: it is in resume tokens
        self.woken = 0
        self.subscriber.attach(self.wake)
        self.socket = RawSocket(self.ours.fileno())
        self.socket.direct_writer(self.wake)
        self.subscriber.enable_fast_path(self.socket)

    def wake(self) -> None:
        self.woken += 1

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self.theirs.recv(1 << 20)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def waiting(self) -> list[bytes]:
        """The payloads the outbox holds back for the websocket's own loop, in order (taken out)."""
        held = []
        while (message := self.subscriber.outbox.next()) is not None:
            held.append(message.payload)
        return held

    def fill(self) -> None:
        """Fill the socket's buffer: the next write would block (nothing to do once the socket was shut down)."""
        for size in (65536, 1):
            while True:
                try:
                    self.ours.send(b"\0" * size)
                except (BlockingIOError, BrokenPipeError):
                    break

    def close(self) -> None:
        self.subscriber.release()
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*args: Any, **kwargs: Any) -> Client:
        made.append(Client(*args, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def message(payload: bytes, id: str | None, **kwargs: Any) -> BusMessage:
    return BusMessage(payload, channel="ch", id=id, **kwargs)


def frame(payload: bytes) -> bytes:
    return message(payload, None).frame


def test_every_plain_client_gets_each_message_once(loop, clients):
    three = [clients() for _ in range(3)]
    listeners = tuple(c.subscriber for c in three)
    first, second = message(b"one", "1700000000000-0"), message(b"two", "1700000000001-0")
    for m in (first, second, second, first):  # a repeat, and an older one, are handed out already
        loop(listeners, m)
    for client in three:
        assert client.received() == frame(b"one") + frame(b"two")
        assert client.subscriber.outbox.position("ch") == (1700000000001, 0)
        assert client.woken == 0 and client.waiting() == []


def test_messages_without_an_id_are_never_held_back(loop, clients):
    client = clients()
    loop((client.subscriber,), message(b"first", "1700000000000-0"))
    for _ in range(2):
        loop((client.subscriber,), message(b"raw", None))  # published by another program
    assert client.received() == frame(b"first") + frame(b"raw") * 2
    assert client.subscriber.outbox.position("ch") == (1700000000000, 0)


@pytest.mark.parametrize("state", ["busy", "pending", "closed", "full"])
def test_a_socket_that_cannot_take_a_frame_now_leaves_it_waiting_and_wakes_the_loop(loop, clients, state):
    client, other = clients(), clients()
    listeners = (client.subscriber, other.subscriber)
    loop(listeners, message(b"one", "1700000000000-0"))
    client.received()
    if state == "full":
        client.fill()
    elif state == "pending":
        client.socket._pending = b"rest of an earlier frame"
    else:
        setattr(client.socket, "_busy" if state == "busy" else "closed", True)
    loop(listeners, message(b"two", "1700000000001-0"))
    loop(listeners, message(b"three", "1700000000002-0"))  # behind one that waits: waits too
    if state != "full":
        assert client.received() == b""
    assert client.woken == 2
    assert client.waiting() == [b"two", b"three"]
    assert other.received() == frame(b"one") + frame(b"two") + frame(b"three")  # the others are not held up


def test_a_frame_the_socket_takes_in_part_is_finished_by_the_loop(loop, clients):
    client = clients()
    loop((client.subscriber,), message(b"one", "1700000000000-0"))
    client.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.received()
    big = message(b"x" * (4 << 20), "1700000000001-0")
    loop((client.subscriber,), big)
    got = client.received()
    assert 0 < len(got) < len(big.frame)
    assert got + client.socket._pending == big.frame  # the rest is kept for the websocket's loop
    assert client.woken == 1
    assert client.subscriber.outbox.position("ch") == (1700000000001, 0)  # handed out: not sent again
    assert client.waiting() == []


def test_a_resuming_client_gets_each_message_behind_its_token(loop, clients):
    plain, resuming = clients(), clients(resume="")
    first, second = message(b"one", "1700000000000-0"), message(b"two", "1700000000001-0")
    for m in (first, second, second):
        loop((plain.subscriber, resuming.subscriber), m)
    got = resuming.received()
    assert got.endswith(b"\ntwo") and got.count(b"\n") == 2  # <token>\n<payload>, twice
    assert resuming.subscriber.outbox.position("ch") == (1700000000001, 0)
    assert plain.received() == frame(b"one") + frame(b"two")


def test_a_websockets_own_message_comes_back_only_with_echo(loop, clients):
    sender, echoing, other = clients(), clients(echo=True), clients()
    listeners = (sender.subscriber, echoing.subscriber, other.subscriber)
    loop(listeners, message(b"one", "1700000000000-0"))
    for c in (sender, echoing, other):
        c.received()
    loop(listeners, message(b"mine", "1700000000001-0", origin=sender.subscriber._origin))
    loop(listeners, message(b"echoed", "1700000000002-0", origin=echoing.subscriber._origin))
    assert sender.received() == frame(b"echoed")
    assert echoing.received() == frame(b"mine") + frame(b"echoed")
    assert other.received() == frame(b"mine") + frame(b"echoed")


def test_a_message_on_several_channels_is_sent_once_by_its_uid(loop, clients):
    client = clients()
    client.subscriber.outbox.channels = ("ch", "other")
    loop((client.subscriber,), message(b"one", "1700000000000-0"))
    for channel, id in (("ch", "1700000000001-0"), ("other", "1700000000001-3")):
        loop((client.subscriber,), BusMessage(b"both", channel=channel, id=id, uid="u1"))
    assert client.received() == frame(b"one") + frame(b"both")


def test_listeners_of_other_kinds_and_subclasses_with_their_own_deliver_are_called(loop, clients):
    got: list[tuple[str, bytes]] = []

    class Counting(RedisSubscriber):
        def deliver(self, message: BusMessage) -> None:
            got.append(("subclass", message.payload))
            super().deliver(message)

    class Presence:
        def deliver(self, message: BusMessage) -> None:
            got.append(("other", message.payload))

    plain, counting = clients(), clients(Counting())
    for id in ("1700000000000-0", "1700000000001-0"):
        loop((Presence(), counting.subscriber, plain.subscriber), message(b"m" + id[-3:].encode(), id))
    assert got == [("other", b"m0-0"), ("subclass", b"m0-0"), ("other", b"m1-0"), ("subclass", b"m1-0")]
    assert counting.received() == plain.received() == frame(b"m0-0") + frame(b"m1-0")


class Broken:
    """A listener whose ``deliver`` raises, as a site's subscriber class with a bug would."""

    def __init__(self) -> None:
        self.resyncs = 0

    def deliver(self, message: BusMessage) -> None:
        raise RuntimeError("broken listener")

    def resync(self) -> None:
        self.resyncs += 1


def test_a_listener_that_raises_keeps_the_message_from_no_other_and_is_told_to_catch_up(loop, clients, caplog, monkeypatch):
    """Logged with its traceback, at most once per interval with a count of the rest; the others get every message."""
    monkeypatch.setattr(fanout, "failures", Throttle(fanout.FAILURE_LOG_INTERVAL))
    before, broken, after = clients(), Broken(), clients()
    with caplog.at_level(logging.ERROR, logger="ws4redis_uwsgi"):
        for n in range(3):
            loop((before.subscriber, broken, after.subscriber), message(b"m%d" % n, f"170000000000{n}-0"))
    assert before.received() == after.received() == frame(b"m0") + frame(b"m1") + frame(b"m2")
    assert broken.resyncs == 3
    [line] = caplog.records  # the second and third within the interval: counted
    assert "to Broken failed" in line.getMessage() and "catches up from history" in line.getMessage()
    assert "broken listener" in caplog.text and "Traceback" in caplog.text
    caplog.clear()
    fanout.failures.reported_at -= fanout.FAILURE_LOG_INTERVAL
    with caplog.at_level(logging.ERROR, logger="ws4redis_uwsgi"):
        loop((broken, after.subscriber), message(b"m3", "1700000000003-0"))
    assert "(2 more since the last report)" in caplog.records[0].getMessage()
    assert after.received().endswith(frame(b"m3"))


def test_a_listener_that_cannot_even_catch_up_is_logged_and_the_loop_goes_on(loop, clients, caplog):
    class Hopeless(Broken):
        def resync(self) -> None:
            raise RuntimeError("no catch-up either")

    after = clients()
    with caplog.at_level(logging.ERROR, logger="ws4redis_uwsgi"):
        loop((Hopeless(), after.subscriber), message(b"one", "1700000000000-0"))
    assert after.received() == frame(b"one")
    assert "could not be told to catch up" in caplog.text and "no catch-up either" in caplog.text


def test_anything_but_an_exception_ends_the_loop_and_reaches_the_hub(loop, clients):
    """A greenlet killed in a listener's deliver (GreenletExit), Ctrl-C: not a listener's failure, the loop stops."""

    class Stop(BaseException):
        pass

    class Killed:
        def deliver(self, message: BusMessage) -> None:
            raise Stop

    before, after = clients(), clients()
    with pytest.raises(Stop):
        loop((before.subscriber, Killed(), after.subscriber), message(b"one", "1700000000000-0"))
    assert before.received() == frame(b"one")  # (after: the C loop wrote to every socket before any deliver())


@override_settings(WS4REDIS_MAX_PENDING_MESSAGES=2)
@pytest.mark.parametrize("seed", range(20))
def test_both_loops_leave_everything_the_same_on_random_sequences(seed):
    """Messages with and without ids, repeats, uids and origins, to plain, resuming and echoing clients
    whose sockets turn busy, full, closed or free again: every client gets the same bytes, and keeps the
    same positions, waiting messages and wake-ups, whichever loop delivered."""
    if "c" not in LOOPS:
        pytest.fail("the C loop was not built")
    outcomes = [_play(random.Random(seed), LOOPS[name]) for name in ("python", "c")]
    assert outcomes[0] == outcomes[1]


def _play(rng: random.Random, loop: Loop) -> list[Any]:
    kinds = [{}, {"resume": ""}, {"echo": True}, {}, {}]
    made = [Client(**kinds[n % len(kinds)], origin=f"client-{n}") for n in range(6)]
    try:
        listeners = tuple(c.subscriber for c in made)
        ids = [f"17000000{n:05d}-0" for n in range(40)]
        received: list[list[bytes]] = [[] for _ in made]
        for step in range(60):
            client = rng.choice(made)
            change = rng.random()
            if change < 0.1:
                client.socket._busy = not client.socket._busy
            elif change < 0.15:
                client.fill()
            elif change < 0.25:
                client.received()  # drained: free again
            payload = b"p%d" % step
            id = rng.choice([None, *ids[max(0, step - 3) : step + 1]])
            uid = rng.choice([None, None, f"uid-{rng.randrange(3)}"])
            origin = rng.choice([None, None, rng.choice(made).subscriber._origin])
            loop(listeners, BusMessage(payload, channel="ch", id=id, uid=uid, origin=origin))
            for n, c in enumerate(made):
                received[n].append(c.received() if c.socket._busy or rng.random() < 0.5 else b"")
        return [
            (b"".join(received[n]) + c.received(), c.subscriber.outbox.positions(), c.waiting(), c.woken, c.socket._pending)
            for n, c in enumerate(made)
        ]
    finally:
        for c in made:
            c.close()
