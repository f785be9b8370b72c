"""Real Redis Sentinel and Redis Cluster topologies for tests, on free loopback ports.

A single redis-server cannot show what a client does when its master dies and
another takes over, or when a slot moves to another shard: these sets start the
real thing from the redis-server on PATH (Redis 7), wait by condition until it
can actually fail over, and break it on demand. Nothing is kept on disk (no RDB,
no AOF, diskless replication) and the working directory is a temporary one,
removed on :meth:`stop`. Every process is kept by port and killed on ``stop()``,
also when ``start()`` failed half-way, so a failing test leaves no redis-server
behind.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from tests.servers import TIMING, free_port, redis_server_executable, wait_for

HOST = "127.0.0.1"
#: One slot table, as in Redis.
CLUSTER_SLOTS = 16384

#: Options of every data node: nothing on disk, full syncs streamed at once (the default waits 5 s for more replicas).
_DATA_NODE_OPTIONS = [
    "--bind",
    HOST,
    "--save",
    "",
    "--appendonly",
    "no",
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
    "--repl-diskless-load",
    "on-empty-db",
]


class _Topology:
    """Processes by port in one temporary directory; what both sets share (start, kill, clients, stop)."""

    prefix = "ws4redis-topology-"

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._clients: dict[tuple[int, bool], redis.Redis] = {}

    # context manager ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        """Start every process and wait until the topology is whole; on any failure kill what was started."""
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        # A safety net for an interpreter that exits without stop() (e.g. a fixture cut short): no orphans.
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Kill every process (SIGKILL: nothing to flush, nothing kept) and remove the directory."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    # processes ------------------------------------------------------------------------------

    def _spawn(self, port: int, args: list[str]) -> None:
        """Start ``redis-server *args`` for ``port``, its output in ``<port>.log``, and wait until it answers PING."""
        assert self.dir is not None, "start() first"
        with open(self.dir / f"{port}.log", "ab") as log:
            self.procs[port] = subprocess.Popen(
                [redis_server_executable(), *args], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self._answers(port), 10, f"redis-server on port {port}")

    def _answers(self, port: int) -> bool:
        proc = self.procs[port]
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}:\n{self.log_tail(port)}")
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def log_tail(self, port: int, lines: int = 20) -> str:
        """The end of a server's log, for error messages."""
        path = self.dir / f"{port}.log" if self.dir else None
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self, port: int) -> bool:
        """Whether the server on ``port`` is running (not killed, not exited)."""
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def kill(self, port: int) -> None:
        """SIGKILL the server on ``port``: the way a crash looks to clients and to its peers."""
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def client(self, port: int, decode: bool = True) -> redis.Redis:
        """An administrative client of one server: 1 s timeouts, so a dead server does not stall a wait.

        Replies are str unless ``decode`` is false (keys, which may be any bytes).
        """
        client = self._clients.get((port, decode))
        if client is None:
            client = self._clients[port, decode] = redis.Redis(
                host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=decode
            )
        return client

    def _query(self, port: int, *args: Any) -> Any:
        """A command for a server that may be down or busy: None instead of an error, for conditions being waited on."""
        try:
            return self.client(port).execute_command(*args)
        except redis.RedisError:
            return None


def _role(topology: _Topology, port: int) -> str | None:
    reply = topology._query(port, "ROLE")
    return reply[0] if reply else None


def _replication(topology: _Topology, port: int) -> dict[str, Any]:
    try:
        return topology.client(port).info("replication")
    except redis.RedisError:
        return {}


class SentinelSet(_Topology):
    """One master, one replica and three sentinels (quorum 2), ready to fail over.

    ``start()`` returns once the replica is in sync and every sentinel knows the
    replica and the two other sentinels: before that a failover cannot happen
    (no candidate, or no majority to elect a leader), so a test killing the
    master earlier would wait in vain.
    """

    prefix = "ws4redis-sentinel-"
    master_name = "mymaster"
    #: A master silent this long is subjectively down; quick failovers, still no false alarm on a busy machine.
    down_after_ms = 1000
    failover_timeout_ms = 5000

    def __init__(self) -> None:
        super().__init__()
        self.data_ports: list[int] = []
        self.sentinel_ports: list[int] = []

    # configuration for clients --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The sentinels and the master's name as one URL, the form a setting takes."""
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def as_dict(self) -> dict[str, Any]:
        """The same as :attr:`url`, in the form of a settings dict (and of ``redis.sentinel.Sentinel``'s arguments)."""
        return {"sentinels": [(HOST, port) for port in self.sentinel_ports], "master_name": self.master_name, "db": 0}

    # start ----------------------------------------------------------------------------------

    def _start(self) -> None:
        master, replica = free_port(), free_port()
        self.data_ports = [master, replica]
        self._start_data_node(master)
        self._start_data_node(replica, replica_of=master)
        for _ in range(3):
            port = free_port()
            self.sentinel_ports.append(port)
            self._start_sentinel(port, master)
        wait_for(lambda: self._in_sync(replica), 20, f"replica {replica} in sync with {master}")
        wait_for(self._sentinels_ready, 30, "sentinels to know the replica and each other")

    def _start_data_node(self, port: int, replica_of: int | None = None) -> None:
        args = ["--port", str(port), *_DATA_NODE_OPTIONS, "--dir", str(self.dir)]
        if replica_of is not None:
            args += ["--replicaof", HOST, str(replica_of)]
        self._spawn(port, args)

    def _start_sentinel(self, port: int, master: int) -> None:
        # Sentinel rewrites its configuration file (discovered peers, epochs): it must be a file of its own.
        assert self.dir is not None
        conf = self.dir / f"sentinel-{port}.conf"
        name = self.master_name
        conf.write_text(
            f"port {port}\n"
            f"bind {HOST}\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {name} {HOST} {master} 2\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        self._spawn(port, [str(conf), "--sentinel"])

    def _in_sync(self, port: int) -> bool:
        return _replication(self, port).get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            replicas = self._query(port, "SENTINEL", "REPLICAS", self.master_name)
            sentinels = self._query(port, "SENTINEL", "SENTINELS", self.master_name)
            if not replicas or sentinels is None or len(sentinels) != len(self.sentinel_ports) - 1:
                return False
        return True

    # the master -----------------------------------------------------------------------------

    def _master_by(self, sentinel: int) -> int | None:
        reply = self._query(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(reply[1]) if reply else None

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers reports it (what a Sentinel client would use)."""
        for sentinel in self.sentinel_ports:
            port = self._master_by(sentinel)
            if port is not None:
                return port
        raise RuntimeError("no sentinel answers")

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port (for :meth:`wait_failover` and :meth:`restart`)."""
        port = self.master_port()
        self.kill(port)
        return port

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        """Wait until every sentinel names a master other than ``old_port`` and that server is a master; its port.

        All sentinels, not one: a client may ask any of them. With these timeouts
        a failover takes a few seconds (1 s to notice, then the election).
        """

        def promoted() -> int | None:
            ports = {self._master_by(sentinel) for sentinel in self.sentinel_ports}
            if len(ports) != 1:
                return None
            (port,) = ports
            if port is None or port == old_port or _role(self, port) != "master":
                return None
            return port

        port = wait_for(promoted, timeout, f"failover away from {old_port}")
        assert isinstance(port, int)
        return port

    def restart(self, port: int) -> None:
        """Start a killed server again on its port, as a replica of the current master, and wait until it is in sync.

        So a second failover can happen, and sentinels see the old master come back the way they would reconfigure it.
        """
        if self.alive(port):
            raise RuntimeError(f"redis-server on port {port} is still running")
        master = self.master_port()
        self._start_data_node(port, replica_of=master)
        wait_for(lambda: self._in_sync(port), 20, f"{port} in sync with {master}")


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES``: a node as one member of the cluster sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    @classmethod
    def parse(cls, line: str) -> NodeView:
        fields = line.split()
        slots: set[int] = set()
        for spec in fields[8:]:
            if spec.startswith("["):  # [slot->-id] / [slot-<-id]: a migration under way, not ownership
                continue
            first, _, last = spec.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        address = fields[1].split("@")[0]
        return cls(
            id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            slots=frozenset(slots),
        )


class ClusterSet(_Topology):
    """Six cluster nodes: three masters sharing the 16384 slots, each with one replica.

    ``start()`` returns once every node sees the same whole cluster and every
    replica is in sync, so a failover or a ``WAIT 1`` works right away.
    """

    prefix = "ws4redis-cluster-"
    #: A node silent this long is failing: quick failovers (about 2-3 s), still no false alarm on a busy machine.
    node_timeout_ms = 1000
    size = 6

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []
        self._killed: dict[int, NodeView] = {}

    # configuration for clients --------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Three of the nodes, as a client would be configured: any one answering is enough to learn the rest."""
        return [(HOST, port) for port in self.ports[:3]]

    @property
    def url(self) -> str:
        """The startup nodes as one URL, the form a setting takes."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.startup_nodes)

    def as_dict(self) -> dict[str, Any]:
        """The same as :attr:`url`, in the form of a settings dict."""
        return {"cluster": True, "startup_nodes": self.startup_nodes}

    # start ----------------------------------------------------------------------------------

    def _start(self) -> None:
        assert self.dir is not None
        for _ in range(self.size):
            # The bus port is chosen too: port + 10000 (the default) may be taken or beyond 65535.
            port, bus = free_port(), free_port()
            self.ports.append(port)
            self._spawn(
                port,
                [
                    "--port",
                    str(port),
                    "--cluster-port",
                    str(bus),
                    *_DATA_NODE_OPTIONS,
                    "--dir",
                    str(self.dir),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                ],
            )
        create = subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"{HOST}:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60 * TIMING,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        wait_for(self._whole, 30, "the cluster to be whole (3 masters with a replica each, all slots, replicas in sync)")

    def _whole(self) -> bool:
        for port in self.ports:
            info = self._info(port)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_assigned") != str(CLUSTER_SLOTS):
                return False
            nodes = self.nodes(port)
            if len(nodes) != self.size or any(node.failed for node in nodes):
                return False
            masters = [node for node in nodes if node.is_master and node.slots]
            if len(masters) != self.size // 2:
                return False
            for master in masters:
                if sum(1 for node in nodes if node.master_id == master.id) != 1:
                    return False
        replicas = [port for port in self.ports if _role(self, port) == "slave"]
        return len(replicas) == self.size // 2 and all(
            _replication(self, port).get("master_link_status") == "up" for port in replicas
        )

    # views ----------------------------------------------------------------------------------

    def _info(self, port: int) -> dict[str, str]:
        reply = self._query(port, "CLUSTER", "INFO")
        if not reply:
            return {}
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)

    def nodes(self, port: int | None = None) -> list[NodeView]:
        """The cluster as the node on ``port`` (default: any live node) sees it; empty if it does not answer."""
        reply = self._query(port or self._live_port(), "CLUSTER", "NODES")
        return [NodeView.parse(line) for line in reply.splitlines() if line.strip()] if reply else []

    def _live_port(self) -> int:
        for port in self.ports:
            if self.alive(port):
                return port
        raise RuntimeError("no cluster node is running")

    def masters(self) -> list[int]:
        """Ports of the masters serving slots now (a failed master is not one)."""
        return sorted(node.port for node in self.nodes() if node.is_master and node.slots and not node.failed)

    def master_for_slot(self, slot: int) -> int:
        """The port of the live master serving ``slot`` now, as a node sees it (a test's own view, not a client's cache)."""
        for node in self.nodes():
            if slot in node.slots and not node.failed:
                return node.port
        raise RuntimeError(f"no live node serves slot {slot}")

    def keyslot(self, name: str | bytes) -> int:
        """The slot of a key or shard channel, as the server computes it (hash tags included)."""
        return int(self.client(self._live_port()).execute_command("CLUSTER", "KEYSLOT", name))

    def node_id(self, port: int) -> str:
        """The node's cluster id, which SETSLOT and CLUSTER NODES use instead of addresses."""
        return str(self.client(port).execute_command("CLUSTER", "MYID"))

    # failover -------------------------------------------------------------------------------

    def kill_master(self, port: int) -> None:
        """SIGKILL the master on ``port``; :meth:`wait_failover` then waits for its replica to take its slots."""
        me = next((node for node in self.nodes(port) if "myself" in node.flags), None)
        if me is None or not me.is_master or not me.slots:
            raise RuntimeError(f"{port} is not a master serving slots")
        self._killed[port] = me
        self.kill(port)

    def wait_failover(self, port: int, timeout: float = 30) -> int:
        """Wait until every live node is ``ok`` and sees one live node serving the killed master's slots; its port."""
        dead = self._killed[port]

        def taken_over() -> int | None:
            heirs = set()
            for live in (p for p in self.ports if self.alive(p)):
                if self._info(live).get("cluster_state") != "ok":
                    return None
                heirs.update(
                    node.port
                    for node in self.nodes(live)
                    if node.is_master and not node.failed and node.id != dead.id and dead.slots <= node.slots
                )
                if not heirs:
                    return None
            return heirs.pop() if len(heirs) == 1 else None

        heir = wait_for(taken_over, timeout, f"a replica to take over from {port}")
        assert isinstance(heir, int)
        return heir

    # resharding -----------------------------------------------------------------------------

    def migrate_slot(self, slot: int, to_port: int, batch: int = 100) -> None:
        """Move ``slot`` with its keys to the master on ``to_port``, as ``redis-cli --cluster reshard`` does.

        IMPORTING on the target and MIGRATING on the source first, so clients get
        ASK redirections for keys already moved instead of a missing key; then
        the keys in batches; then the new owner on the target, the source and the
        other masters. Returns once every live node agrees on the owner.
        """
        source = self.master_for_slot(slot)
        if source == to_port:
            raise ValueError(f"slot {slot} is already served by {to_port}")
        src_id, dst_id = self.node_id(source), self.node_id(to_port)
        src, dst = self.client(source, decode=False), self.client(to_port)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", HOST, to_port, "", 0, int(5000 * TIMING), "REPLACE", "KEYS", *keys)
        others = [port for port in self.masters() if port not in (source, to_port)]
        for port in [to_port, source, *others]:
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

        def agreed() -> bool:
            for live in (p for p in self.ports if self.alive(p)):
                owners = [node.port for node in self.nodes(live) if slot in node.slots]
                if owners != [to_port]:
                    return False
            return True

        wait_for(agreed, 10, f"every node to see slot {slot} on {to_port}")


class PatientClusterSet(ClusterSet):
    """Nodes that wait a minute before calling a silent master failing: a frozen master keeps its slots."""

    node_timeout_ms = 60000
