"""What the provisioner tests share: a running pool, waiting, and reaching a desktop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from selfagent.provisioner.backend import SandboxBackend, SandboxHandle
from selfagent.provisioner.pool import Pool
from selfagent.provisioner.socket_proxy import Settings as ProxySettings
from selfagent.provisioner.socket_proxy import SocketProxy
from selfagent.provisioner.state import StateStore
from selfagent.rfb import RFBClient
from selfagent.schemas.sandboxes import SandboxEvent


def unique_host() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def running_pool(
    backend: SandboxBackend, state: StateStore, *, keep_running: bool = False, **options: Any
) -> AsyncIterator[tuple[Pool, list[SandboxEvent]]]:
    events: list[SandboxEvent] = []

    async def publish(event: SandboxEvent) -> None:
        events.append(event)

    # The pool takes the backend's host name when it starts.
    pool = Pool(backend, state, host="", publish=publish, **options)
    await pool.start()
    try:
        yield pool, events
    finally:
        await pool.stop(keep_running=keep_running)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def warm_count(pool: Pool) -> int:
    return sum(1 for info in pool.sandboxes() if info.state == "warm")


async def first_frame(host: str, port: int, password: str) -> tuple[int, int]:
    """Connect over VNC with the password and return the size of the first full frame."""
    client = RFBClient(host, port, password)
    await client.connect(timeout=10)
    try:
        assert any(client.framebuffer), "the first frame is all black"
        return client.width, client.height
    finally:
        await client.close()


async def shell(handle: SandboxHandle, command: str, token: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(
            f"{handle.endpoint.exec_url}/exec",
            json={"command": command},
            headers={"Authorization": f"Bearer {token or handle.secrets.exec_token}"},
        )


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyThread:
    """The proxy on its own event loop: the SDK's calls block, and the tests make them."""

    def __init__(self, settings: ProxySettings) -> None:
        self.proxy = SocketProxy(settings)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.task: asyncio.Task[None] | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        started = asyncio.Event()
        self.task = self.loop.create_task(self.proxy.serve(started))
        self.loop.create_task(self._signal(started))
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    async def _signal(self, started: asyncio.Event) -> None:
        await started.wait()
        self.ready.set()

    def __enter__(self) -> ProxyThread:
        self.thread.start()
        assert self.ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)
