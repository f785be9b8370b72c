"""Many websocket vassals on many hosts, one Redis: what a load balancer in front of several machines relies on.

Two uWSGI websocket vassals share one redis-server. In the ``namespaces``
variant each vassal runs in its own Linux network namespace with its own
address (``tests/netns.py``), and Redis listens on the bridge between
them, so the vassals are as far apart as two machines are to their sockets;
where namespaces cannot be made that variant is skipped with the reason. The
``loopback`` variant runs the same tests with both vassals on 127.0.0.1 on
two ports, so the behaviour is covered everywhere. The test process plays
the browsers (on whichever vassal a load balancer would have picked) and
the Django views that publish.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv, split
from tests.netns import BoundRedisServer, Host, NamespacesUnavailableError, Network
from tests.servers import RedisServer, UwsgiServer, wait_for
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class HostedUwsgi(UwsgiServer):
    """UwsgiServer's websocket vassal, run inside ``host``'s namespace and listening on its address.

    The command line is UwsgiServer's (one worker, gevent, socket-timeout 1,
    die-on-term, ...) with ``ip netns exec`` in front and the host's address
    in ``--http-socket``.
    """

    def __init__(self, env: dict[str, str], host: Host, **kwargs) -> None:
        super().__init__(env, **kwargs)
        self.host = host

    @property
    def url(self) -> str:
        return f"ws://{self.host.address}:{self.port}"

    def start(self) -> HostedUwsgi:
        self.log = open(self.log_path, "ab")
        self.proc = self.host.popen(
            self.command(self.host.address),
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: self.proc.poll() is None and self._listening() and self.worker_pids(),
            30,
            f"uWSGI on {self.host.address}:{self.port} in {self.host.namespace}",
        )
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host.address, self.port), timeout=0.5):
                return True
        except OSError:
            return False


@dataclass
class ManyHosts:
    """One Redis, two websocket vassals, and the addresses they run on."""

    kind: str
    redis: RedisServer
    vassals: list[UwsgiServer]
    #: Where each vassal's connections to Redis come from, as CLIENT LIST shows them (None: not distinguishable).
    addresses: list[str] | None

    @property
    def a(self) -> UwsgiServer:
        return self.vassals[0]

    @property
    def b(self) -> UwsgiServer:
        return self.vassals[1]


@pytest.fixture(scope="module", params=["namespaces", "loopback"])
def hosts(request, site_db, tmp_path_factory) -> Iterator[ManyHosts]:
    from django.test import override_settings

    workdir = tmp_path_factory.mktemp(f"many-hosts-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "namespaces":
            try:
                network = stack.enter_context(Network(count=2))
            except NamespacesUnavailableError as refused:
                pytest.skip(f"no network namespaces on this machine ({refused}); the loopback variant covers it")
            redis_server: RedisServer = BoundRedisServer(network.gateway, workdir=workdir)
        else:
            network = None
            redis_server = RedisServer(workdir=workdir)
        redis_server.start()
        stack.callback(redis_server.stop)
        env = {**SITE_ENV, "WS4REDIS_TEST_REDIS": redis_server.url}
        vassals: list[UwsgiServer] = []
        for i in range(2):
            log_path = workdir / f"uwsgi-{i}.log"
            if network is not None:
                vassal: UwsgiServer = HostedUwsgi(env, network.hosts[i], cores=200, log_path=log_path)
            else:
                vassal = UwsgiServer(env, cores=200, log_path=log_path)
            stack.callback(vassal.stop)
            vassal.start()
            vassals.append(vassal)
        addresses = [host.address for host in network.hosts] if network is not None else None
        stack.enter_context(override_settings(WS4REDIS_CONNECTION=redis_server.url))
        yield ManyHosts(request.param, redis_server, vassals, addresses)


@pytest.fixture
def probe(hosts: ManyHosts):
    import redis

    connection = redis.Redis.from_url(hosts.redis.url)
    yield connection
    connection.close()


def until(ws, last: str) -> list[str | bytes]:
    """Every message ``ws`` receives up to and including ``last``: what arrived, counted exactly."""
    received: list[str | bytes] = []
    while not received or received[-1] != last:
        received.append(recv(ws))
    return received


def resume_path(fac: str, query: str, token: str) -> str:
    return f"/ws/{fac}?{query}&resume={quote(token, safe='')}"


def test_every_vassal_subscribes_once_from_its_own_host(hosts: ManyHosts, probe, login):
    fac = facility()
    with client(hosts.a, f"/ws/{fac}?subscribe-broadcast", login("john")), client(hosts.b, f"/ws/{fac}?subscribe-broadcast"):
        subscribers = [c for c in probe.client_list() if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]
        assert len(subscribers) == 2, subscribers  # one pub/sub connection per worker, not per websocket
        if hosts.addresses is not None:
            assert sorted(c["addr"].rsplit(":", 1)[0] for c in subscribers) == sorted(hosts.addresses)
        channel = f"test:broadcast:{fac}"
        assert dict(probe.pubsub_numsub(channel))[channel.encode()] == 2


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
def test_a_message_from_django_reaches_every_client_on_every_host_once(hosts: ManyHosts, login):
    fac = facility()
    john, mary = login("john"), login("mary")
    subscribe = f"/ws/{fac}?subscribe-broadcast&subscribe-user"
    with contextlib.ExitStack() as stack:
        johns = [stack.enter_context(client(v, subscribe, john)) for v in hosts.vassals]
        marys = [stack.enter_context(client(hosts.b, subscribe, mary))]
        anonymous = [
            stack.enter_context(client(v, f"/ws/{fac}?subscribe-broadcast", cookie))
            for v in hosts.vassals
            for cookie in (None, login(None))
        ]
        receivers = RedisPublisher(facility=fac, broadcast=True).publish_message("to everybody", expire=0)
        assert receivers == 2  # Redis counts subscribed worker processes: one per vassal
        assert RedisPublisher(facility=fac, users=["john"]).publish_message("to john", expire=0) == 2
        RedisPublisher(facility=fac, broadcast=True).publish_message("end", expire=0)
        for ws in johns:
            assert until(ws, "end") == ["to everybody", "to john", "end"]
        for ws in marys + anonymous:
            assert until(ws, "end") == ["to everybody", "end"]


def test_a_client_on_one_host_publishes_to_clients_on_the_other(hosts: ManyHosts, login):
    fac = facility()
    both = f"/ws/{fac}?subscribe-broadcast&publish-broadcast"
    with (
        client(hosts.a, both) as sender_a,
        client(hosts.a, f"/ws/{fac}?subscribe-broadcast") as listener_a,
        client(hosts.b, both, login("john")) as sender_b,
        client(hosts.b, f"/ws/{fac}?subscribe-broadcast") as listener_b,
    ):
        sender_a.send("from host A")
        assert recv(listener_b) == "from host A"
        sender_b.send("from host B")
        assert [recv(listener_a), recv(listener_a)] == ["from host A", "from host B"]
        RedisPublisher(facility=fac, broadcast=True).publish_message("end", expire=0)
        # Without echo a sender does not get its own message back; everyone else gets each once.
        assert until(sender_a, "end") == ["from host B", "end"]
        assert until(sender_b, "end") == ["from host A", "end"]
        assert until(listener_a, "end") == ["end"]
        assert until(listener_b, "end") == ["from host B", "end"]


@pytest.mark.parametrize("who", ["anonymous", "john"])
def test_resume_on_another_host_gets_exactly_what_was_missed(hosts: ManyHosts, login, who):
    fac = facility()
    if who == "john":
        cookie, query, publisher = login("john"), "subscribe-user", RedisPublisher(facility=fac, users=["john"])
    else:
        cookie, query, publisher = None, "subscribe-broadcast", RedisPublisher(facility=fac, broadcast=True)
    with client(hosts.a, resume_path(fac, query, ""), cookie) as ws:
        publisher.publish_message("one", expire=0)
        token, payload = split(recv(ws))
        assert payload == "one" and token
    missed = ["two", "three", "four"]
    for text in missed:
        publisher.publish_message(text, expire=0)
    with client(hosts.b, resume_path(fac, query, token), cookie) as ws:
        frames = [split(recv(ws)) for _ in missed]
        assert [payload for _, payload in frames] == missed
        assert all(t for t, _ in frames) and len({t for t, _ in frames} | {token}) == 4
        publisher.publish_message("five", expire=0)  # live again, nothing repeated in between
        token, payload = split(recv(ws))
        assert payload == "five"
    # And back: a token handed out by host B resumes on host A.
    publisher.publish_message("six", expire=0)
    with client(hosts.a, resume_path(fac, query, token), cookie) as ws:
        assert split(recv(ws))[1] == "six"
        publisher.publish_message("seven", expire=0)
        assert split(recv(ws))[1] == "seven"


def test_rolling_restart_closes_with_1012_and_clients_resume_on_the_other_host(hosts: ManyHosts):
    """A reloaded vassal (what a touched vassal file makes the emperor do) closes with 1012; B takes over."""
    fac = facility()
    publisher = RedisPublisher(facility=fac, broadcast=True)
    query = "subscribe-broadcast"
    old_workers = hosts.a.worker_pids()
    with client(hosts.b, f"/ws/{fac}?{query}") as bystander:
        with client(hosts.a, resume_path(fac, query, "")) as ws:
            publisher.publish_message("before", expire=0)
            token, payload = split(recv(ws))
            assert payload == "before"
            hosts.a.proc.send_signal(signal.SIGHUP)  # a graceful reload of vassal A only
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.SERVICE_RESTART
        publisher.publish_message("while reconnecting", expire=0)
        with client(hosts.b, resume_path(fac, query, token)) as ws:
            assert split(recv(ws))[1] == "while reconnecting"
            publisher.publish_message("after", expire=0)
            assert split(recv(ws))[1] == "after"
        assert until(bystander, "after") == ["before", "while reconnecting", "after"]  # host B never noticed
    # Vassal A is back, with a new worker, for whatever comes next.
    wait_for(lambda: hosts.a.worker_pids() and hosts.a.worker_pids() != old_workers, 30, "vassal A reloaded")
    wait_for(lambda: _accepts(hosts.a, fac), 30, "vassal A accepting websockets again")


def _accepts(vassal: UwsgiServer, fac: str) -> bool:
    try:
        with client(vassal, f"/ws/{fac}?subscribe-broadcast"):
            return True
    except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):  # refused or reset while it comes up
        return False
