"""``/ws/vnc``: the browser's noVNC on one side, the sandbox's VNC server on the other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from selfagent.errors import RFBError, VncAuthFailed
from selfagent.rfb import (
    PROTOCOL_38,
    ClientMessageFilter,
    client_handshake,
    refusal,
    server_handshake,
)

log = logging.getLogger(__name__)

WS_NORMAL = 1000
WS_UNSUPPORTED_DATA = 1003
WS_PROTOCOL_ERROR = 1002
WS_UPSTREAM_ERROR = 1011
READ_CHUNK = 1 << 20
STREAM_LIMIT = 1 << 21
BROWSER_HANDSHAKE_TIMEOUT = 10.0


class _BrowserGone(Exception):
    pass


class NoTarget(Exception):
    """There is no desktop to bridge to; the message is what noVNC shows."""


@dataclass(frozen=True)
class VncTarget:
    host: str
    port: int
    password: str = field(repr=False)
    # Added to a failed login's message: where the password comes from.
    password_hint: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class BridgeStats:
    """Counters of live bridges, for /healthz and for tests."""

    active: int = 0
    total: int = 0
    dropped_input: int = 0
    last_error: str | None = None
    bytes_down: int = 0
    bytes_up: int = 0
    started: float = field(default_factory=time.monotonic)


class _BrowserStream:
    """The browser's WebSocket as the byte stream the RFB code reads and writes.

    Reads take exact byte counts from messages, which noVNC may split or
    merge; each drain sends what was written as one message.
    """

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.buf = bytearray()
        self._out = bytearray()

    async def message(self) -> bytes:
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise _BrowserGone
        data: bytes | None = msg.get("bytes")
        if data is None:
            raise RFBError("the VNC WebSocket carries binary frames only")
        return data

    async def readexactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            self.buf += await self.message()
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def write(self, data: bytes) -> None:
        self._out += data

    async def drain(self) -> None:
        data, self._out = bytes(self._out), bytearray()
        await self.ws.send_bytes(data)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    # A close reason may hold at most 123 bytes.
    with contextlib.suppress(Exception):
        await ws.close(code, reason.encode()[:120].decode(errors="ignore"))


async def _refuse(ws: WebSocket, reader: _BrowserStream, reason: str) -> None:
    """Tell noVNC why in its own protocol (it shows the reason), then close."""
    log.warning("VNC bridge refused: %s", reason)
    with contextlib.suppress(Exception):
        await ws.send_bytes(PROTOCOL_38)
        await asyncio.wait_for(reader.readexactly(12), 3.0)
        await ws.send_bytes(refusal(reason))
    await _close(ws, WS_UPSTREAM_ERROR, reason)


async def bridge(
    ws: WebSocket,
    resolve: Callable[[], Awaitable[VncTarget]],
    allow_input: Callable[[], bool],
    stats: BridgeStats,
    connect_timeout: float,
) -> None:
    """Serve one noVNC connection.

    ``resolve`` names the desktop (raising :class:`NoTarget` with the reason
    when there is none); ``allow_input`` is asked for every client message
    whether pointer and key input may pass (the desktop is taken over).
    """
    await ws.accept()
    browser = _BrowserStream(ws)
    try:
        target = await resolve()
    except NoTarget as exc:
        stats.last_error = str(exc)
        await _refuse(ws, browser, stats.last_error)
        return
    try:
        tcp_reader, tcp_writer = await asyncio.wait_for(
            # A large stream limit lets one read take a whole burst of
            # framebuffer data, so it crosses the WebSocket in few messages.
            asyncio.open_connection(target.host, target.port, limit=STREAM_LIMIT),
            connect_timeout,
        )
    except (OSError, TimeoutError) as exc:
        stats.last_error = (
            f"cannot reach the sandbox VNC server at {target.address}: {exc or 'timeout'}"
        )
        await _refuse(ws, browser, stats.last_error)
        return

    stats.active += 1
    stats.total += 1
    try:
        sock = tcp_writer.get_extra_info("socket")
        if sock is not None:
            # Pointer and key messages are tiny; Nagle would hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            login = await asyncio.wait_for(
                client_handshake(tcp_reader, tcp_writer, target.password), connect_timeout
            )
        except (RFBError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, VncAuthFailed) and target.password_hint:
                detail += f" ({target.password_hint})"
            elif isinstance(exc, TimeoutError):
                detail = "the VNC server did not complete the handshake in time"
            stats.last_error = f"VNC server {target.address}: {detail}"
            await _refuse(ws, browser, stats.last_error)
            return

        try:
            # No authentication towards the browser: the gateway token already admitted it.
            await asyncio.wait_for(
                server_handshake(browser, browser, login.server_init), BROWSER_HANDSHAKE_TIMEOUT
            )
        except (RFBError, TimeoutError) as exc:
            await _close(ws, WS_PROTOCOL_ERROR, f"RFB handshake with the browser failed: {exc}")
            return
        except _BrowserGone:
            return

        await _relay(ws, browser, tcp_reader, tcp_writer, allow_input, stats)
    finally:
        stats.active -= 1
        tcp_writer.close()
        with contextlib.suppress(Exception):
            await tcp_writer.wait_closed()


async def _relay(
    ws: WebSocket,
    browser: _BrowserStream,
    tcp_reader: asyncio.StreamReader,
    tcp_writer: asyncio.StreamWriter,
    allow_input: Callable[[], bool],
    stats: BridgeStats,
) -> None:
    messages = ClientMessageFilter()

    async def upstream() -> tuple[int, str]:
        pending = bytes(browser.buf)
        browser.buf.clear()
        while True:
            dropped = messages.dropped
            data = messages.feed(pending, allow_input=allow_input())
            stats.dropped_input += messages.dropped - dropped
            if data:
                tcp_writer.write(data)
                await tcp_writer.drain()
                stats.bytes_up += len(data)
            pending = await browser.message()

    async def downstream() -> tuple[int, str]:
        while True:
            data = await tcp_reader.read(READ_CHUNK)
            if not data:
                return WS_UPSTREAM_ERROR, "the VNC server closed the connection"
            stats.bytes_down += len(data)
            try:
                await ws.send_bytes(data)
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise _BrowserGone from exc

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    finished = done.pop()
    exc = finished.exception()
    if exc is None:
        code, reason = finished.result()
        await _close(ws, code, reason)
    elif isinstance(exc, _BrowserGone):
        return
    elif isinstance(exc, RFBError):
        log.warning("VNC bridge: browser protocol error: %s", exc)
        code = WS_UNSUPPORTED_DATA if "binary" in str(exc) else WS_PROTOCOL_ERROR
        await _close(ws, code, str(exc))
    elif isinstance(exc, OSError | ConnectionError):
        await _close(ws, WS_UPSTREAM_ERROR, f"VNC connection lost: {exc}")
    else:
        log.error("VNC bridge failed", exc_info=exc)
        await _close(ws, WS_UPSTREAM_ERROR, "internal error in the VNC bridge")
