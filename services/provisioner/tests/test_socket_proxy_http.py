"""The Docker proxy's own HTTP handling, with no engine behind it: bounds, refusals, timeouts."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selfagent.provisioner.socket_proxy import Settings

from .helpers import ProxyThread, free_tcp_port


def _exchange(port: int, data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Send raw bytes, read until the proxy closes; every response on the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    replies = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers["Content-Length"])
        body, received = rest[:length], rest[length:]
        replies.append((int(lines[0].split(" ")[1]), json.loads(body) if body else {}))
    return replies


@pytest.fixture
def hung_engine(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket that accepts connections and never answers."""
    path = tmp_path / "hung.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    yield path
    server.close()


@pytest.fixture
def proxy_port(tmp_path: Path, hung_engine: Path) -> Iterator[int]:
    port = free_tcp_port()
    settings = Settings(
        listen_host="127.0.0.1",
        port=port,
        socket=hung_engine,
        network="net-x",
        max_body=2048,
        request_timeout=0.5,
    )
    with ProxyThread(settings):
        yield port


def test_bounds_and_refusals_before_the_engine(proxy_port: int) -> None:
    big = b"x" * 4096
    ((status, body),) = _exchange(
        proxy_port,
        b"POST /containers/create?name=selfagent-sandbox-a HTTP/1.1\r\nHost: p\r\n"
        + f"Content-Length: {len(big)}\r\n\r\n".encode()
        + big,
    )
    assert status == 413 and "2048" in body["message"]
    ((status, body),) = _exchange(
        proxy_port,
        b"POST /volumes/create HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert status == 411
    ((status, body),) = _exchange(proxy_port, b"NOT HTTP\r\n\r\n")
    assert status == 400
    ((status, body),) = _exchange(
        proxy_port,
        b"POST /containers/abc/attach HTTP/1.1\r\nHost: p\r\nUpgrade: tcp\r\n"
        b"Connection: Upgrade\r\n\r\n",
    )
    assert status == 403 and "hijacked" in body["message"]
    ((status, body),) = _exchange(
        proxy_port,
        b"POST /containers/create HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\n[1,2]",
    )
    assert status == 403 and "not a JSON object" in body["message"]
    # One keep-alive connection, several answers; then a close.
    replies = _exchange(
        proxy_port,
        b"GET /networks/other HTTP/1.1\r\nHost: p\r\n\r\n"
        b"GET /secrets HTTP/1.1\r\nHost: p\r\n\r\n"
        b"POST /containers/create?name=selfagent-sandbox-b HTTP/1.1\r\nHost: p\r\n"
        b"Content-Length: 7\r\nConnection: close\r\n\r\nnotjson",
    )
    assert [status for status, _ in replies] == [403, 403, 403]
    assert "only the network net-x" in replies[0][1]["message"]
    assert "allow-list" in replies[1][1]["message"]
    assert "not JSON" in replies[2][1]["message"]


def test_an_engine_that_does_not_answer_is_a_timeout(proxy_port: int) -> None:
    ((status, body),) = _exchange(
        proxy_port, b"GET /_ping HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    assert status == 504 and "did not answer" in body["message"]


def test_no_engine_is_a_bad_gateway(tmp_path: Path) -> None:
    port = free_tcp_port()
    settings = Settings(listen_host="127.0.0.1", port=port, socket=tmp_path / "none.sock")
    with ProxyThread(settings):
        ((status, body),) = _exchange(
            port, b"GET /version HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
    assert status == 502 and "the engine" in body["message"]
