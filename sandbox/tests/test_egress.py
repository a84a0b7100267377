"""Sandbox egress with the real engine: the desktop network as compose makes
it (internal, no host address) and the egress proxy image. Only this
machine's own addresses are used; nothing is sent anywhere else."""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.docker import build_image, require_engine, run

pytestmark = pytest.mark.docker

PROXY_IMAGE = "selfagent/egress-proxy:test"
PROBE_IMAGE = "selfagent/sandbox:test"
# Open a TCP connection (and, for the proxy, send one request): prints what happened.
PROBE = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=5)
except OSError as exc:
    print("blocked", exc); sys.exit()
if len(sys.argv) > 3:
    s.sendall(f"GET {sys.argv[3]} HTTP/1.0\r\n\r\n".encode())
    print(s.recv(200).decode(errors="replace").splitlines()[0])
else:
    print("connected")
"""


def _docker(*args: str) -> str:
    return run(["docker", *args], timeout=120).stdout.strip()


def _probe(network: str, *args: str) -> str:
    return _docker(
        "run",
        "--rm",
        "--network",
        network,
        "--cap-drop",
        "ALL",
        "--entrypoint",
        "python3",
        PROBE_IMAGE,
        "-c",
        PROBE,
        *args,
    )


def _bridge_address() -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[3].split("/")[0]


@pytest.fixture(scope="module")
def nets() -> Iterator[tuple[str, str]]:
    require_engine()
    build_image("deploy/egress-proxy/Dockerfile", PROXY_IMAGE)
    build_image("sandbox/Dockerfile", PROBE_IMAGE)
    tag = uuid.uuid4().hex[:8]
    desktop, proxy = f"selfagent-test-desktop-{tag}", f"selfagent-test-egress-{tag}"
    _docker(
        "network",
        "create",
        "--internal",
        "-o",
        "com.docker.network.bridge.inhibit_ipv4=true",
        desktop,
    )
    try:
        _docker(
            "run",
            "-d",
            "--name",
            proxy,
            "--network",
            desktop,
            "--cap-drop",
            "ALL",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/var/spool/squid",
            "--tmpfs",
            "/var/log/squid",
            PROXY_IMAGE,
        )
        yield desktop, proxy
    finally:
        run(["docker", "rm", "-f", proxy], check=False)
        run(["docker", "network", "rm", desktop], check=False)


def test_a_port_on_the_host_is_unreachable_from_the_desktop(nets: tuple[str, str]) -> None:
    desktop, proxy = nets
    address = _bridge_address()
    server = socket.create_server((address, 0))
    port = server.getsockname()[1]
    accepted: list[object] = []

    def serve() -> None:
        server.settimeout(60)
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            accepted.append(peer)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        # The port works: a container on the default bridge reaches it.
        assert _probe("bridge", address, str(port)) == "connected"
        assert len(accepted) == 1
        # Not from the desktop network, directly or through the proxy.
        assert _probe(desktop, address, str(port)).startswith("blocked")
        reply = _probe(desktop, proxy, "3128", f"http://{address}:{port}/")
        assert reply.startswith("HTTP/1.1 403"), reply
        assert len(accepted) == 1
    finally:
        server.close()


def test_the_proxy_refuses_another_containers_address(nets: tuple[str, str]) -> None:
    desktop, proxy = nets
    name = f"selfagent-test-web-{uuid.uuid4().hex[:8]}"
    _docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        desktop,
        "--cap-drop",
        "ALL",
        "--entrypoint",
        "python3",
        PROBE_IMAGE,
        "-m",
        "http.server",
        "80",
    )
    try:
        address = _docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
        )
        # On port 80, which the proxy serves, by address and by name.
        for url in (f"http://{address}/", f"http://{name}/"):
            reply = _probe(desktop, proxy, "3128", url)
            assert reply.startswith("HTTP/1.1 403"), (url, reply)
        assert "GET /" not in run(["docker", "logs", name], check=False).stderr
        # The server is up: a direct request on the same network gets it.
        assert _probe(desktop, address, "80", "/").startswith("HTTP/1.0 200")
    finally:
        run(["docker", "rm", "-f", name], check=False)
