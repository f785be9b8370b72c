"""Several "hosts" on one machine: Linux network namespaces on a bridge, and a Redis every host reaches.

::

    root namespace: bridge w4rbr<sfx>, 10.77.<n>.254/24   (redis-server binds here)
        ├── veth ── namespace w4r-a-<sfx>: eth0 10.77.<n>.1/24
        └── veth ── namespace w4r-b-<sfx>: eth0 10.77.<n>.2/24

Each namespace has its own address, loopback and port space, as a machine
has; the root namespace (the test process: the clients, the publishing
Django code and the load balancer's place) reaches every host, and every
host reaches the bridge address. Making namespaces needs CAP_SYS_ADMIN and
CAP_NET_ADMIN: ``Network().start()`` tries, and where it is refused raises
:class:`NamespacesUnavailableError` with the command and its error, for the
caller to skip on. ``close()`` (also on ``with`` exit and after a failed
start) kills every process left in the namespaces and removes namespaces,
links and the bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import RedisServer, wait_for

#: Subnets are 10.77.<n>.0/24; this lock keeps concurrent test runs from taking the same <n>.
_LOCK = Path("/tmp/ws4redis-netns.lock")


class NamespacesUnavailableError(RuntimeError):
    """This machine (or user) cannot make network namespaces, links or bridges."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    """One network namespace with one address: a machine, as far as sockets can tell."""

    namespace: str
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the namespace (``ip netns exec`` execs it: the pid is the program's own)."""
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process living in the namespace, whoever started it."""
        result = _ip("netns", "pids", self.namespace)
        return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


class Network:
    """``count`` hosts on one bridge of the root namespace; ``gateway`` is the root namespace's address on it."""

    def __init__(self, count: int = 2) -> None:
        suffix = secrets.token_hex(3)
        self.suffix = suffix
        self.bridge = f"w4rbr{suffix}"
        self.names = [f"w4r-{chr(ord('a') + i)}-{suffix}" for i in range(count)]
        self.veths = [f"w4r{chr(ord('a') + i)}{suffix}" for i in range(count)]  # the root namespace's ends
        self.subnet: int | None = None
        self.hosts: list[Host] = []
        self._created_namespaces: list[str] = []
        self._bridge_made = False

    @property
    def gateway(self) -> str:
        return f"10.77.{self.subnet}.254"

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _must(self, *args: str) -> None:
        result = _ip(*args)
        if result.returncode != 0:
            raise NamespacesUnavailableError(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}")

    def start(self) -> Network:
        if shutil.which("ip") is None:
            raise NamespacesUnavailableError("no `ip` command (iproute2)")
        try:
            self._build()
            self.check()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        # The first namespace doubles as the probe of the right to make them.
        for name in self.names:
            self._must("netns", "add", name)
            self._created_namespaces.append(name)
        with open(_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = self._free_subnet()
            self._must("link", "add", self.bridge, "type", "bridge")
            self._bridge_made = True
            self._must("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        self._must("link", "set", self.bridge, "up")
        for i, (name, veth) in enumerate(zip(self.names, self.veths, strict=True)):
            address = f"10.77.{self.subnet}.{i + 1}"
            self._must("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            self._must("link", "set", veth, "master", self.bridge, "up")
            self._must("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            self._must("-n", name, "link", "set", "eth0", "up")
            self._must("-n", name, "link", "set", "lo", "up")
            self.hosts.append(Host(name, address))

    @staticmethod
    def _free_subnet() -> int:
        in_use = _ip("-o", "-4", "addr", "show").stdout
        candidates = [n for n in range(1, 255) if f" 10.77.{n}." not in in_use]
        if not candidates:
            raise NamespacesUnavailableError("every 10.77.<n>.0/24 is in use")
        return random.choice(candidates)

    def check(self) -> None:
        """Each host opens a TCP connection to the bridge address: both directions work."""
        with socket.create_server((self.gateway, 0)) as listener:
            port = listener.getsockname()[1]
            listener.settimeout(10)
            for host in self.hosts:
                probe = f"import socket; socket.create_connection(({self.gateway!r}, {port}), timeout=5).close()"
                result = host.run([sys.executable, "-c", probe])
                if result.returncode != 0:
                    raise RuntimeError(f"{host.namespace} cannot reach {self.gateway}: {result.stderr.strip()}")
                listener.accept()[0].close()

    def close(self) -> None:
        """Remove everything ``start()`` made, whatever state it is in; safe to call twice."""
        for host in self.hosts:
            for proc in host.processes:
                if proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
        for name in self._created_namespaces:
            host = Host(name, "")
            for pid in host.pids():  # whatever is left in our own namespace is ours
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                wait_for(lambda host=host: not host.pids(), 10, f"the processes of {name} to end")
        for host in self.hosts:
            for proc in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for veth in self.veths:  # deleting one end of a veth pair deletes both, at once
            if _ip("link", "show", veth).returncode == 0:
                _ip("link", "del", veth)
        for name in self._created_namespaces:
            _ip("netns", "del", name)
        self._created_namespaces = []
        if self._bridge_made:
            _ip("link", "del", self.bridge)
            self._bridge_made = False


class BoundRedisServer(RedisServer):
    """A private redis-server listening on ``host`` (the bridge address), reachable from every namespace."""

    def __init__(self, host: str, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.host = host

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> BoundRedisServer:
        # Clients come from other hosts' addresses, which protected mode refuses without a password.
        self.proc = subprocess.Popen(
            [*self.command(bind=self.host), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, f"redis-server on {self.host}:{self.port}")
        return self
