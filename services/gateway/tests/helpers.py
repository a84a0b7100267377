"""What several gateway test files share: a WebSocket read until close, a NATS subscription."""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.nats import NatsBroker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def recv_close(ws_url: str, **kw: Any) -> tuple[int | None, str, list[object]]:
    """Connect, read whatever arrives until the server closes; return code, reason, data."""
    received: list[object] = []
    async with connect(ws_url, open_timeout=5, **kw) as ws:
        try:
            while True:
                received.append(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "server closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason, received
    raise AssertionError("unreachable")


class Subscription:
    """Collect what arrives on a subject, as an automation client would."""

    def __init__(self, broker: NatsBroker, subject: str) -> None:
        self.broker, self.subject = broker, subject
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()

    async def __aenter__(self) -> Subscription:
        async def handler(msg: Any) -> None:
            await self.messages.put(msg.data)

        self.sub = await self.broker.connection.subscribe(self.subject, cb=handler)
        await self.broker.connection.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    # A budget, not a speed claim: on a saturated machine a test process can
    # stall for seconds (seen: 5 s gone by with the message not yet read).
    async def next(self, timeout: float = 10.0) -> bytes:
        try:
            return await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            nc = self.broker.connection
            raise AssertionError(
                f"nothing on {self.subject} within {timeout} s "
                f"(client connected: {nc.is_connected}, stats: {nc.stats})"
            ) from None
