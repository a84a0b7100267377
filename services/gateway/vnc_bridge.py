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

from selfagent.errors import DesktopUnavailable, RFBError, VncAuthFailed
from selfagent.rfb import (
    PROTOCOL_38,
    ClientMessageFilter,
    client_handshake,
    message_length,
    pointer_event,
    refusal,
    server_handshake,
)
from selfagent.rfb._protocol import KEY_EVENT, POINTER_EVENT, QEMU, key_event

log = logging.getLogger(__name__)

WS_NORMAL = 1000
WS_UNSUPPORTED_DATA = 1003
WS_PROTOCOL_ERROR = 1002
WS_UPSTREAM_ERROR = 1011
READ_CHUNK = 1 << 20
STREAM_LIMIT = 1 << 21
BROWSER_HANDSHAKE_TIMEOUT = 10.0
# How long the key-ups of a closing connection may take to reach the VNC server.
RELEASE_TIMEOUT = 2.0


class _BrowserGone(Exception):
    pass


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
    # Key-ups and button-ups the gateway sent itself when a take-over ended
    # with keys or buttons still down.
    released_input: int = 0
    last_error: str | None = None
    bytes_down: int = 0
    bytes_up: int = 0
    started: float = field(default_factory=time.monotonic)


class HeldInput:
    """What one connection's forwarded input left pressed on the desktop.

    Fed the messages that reached the VNC server; :meth:`release` makes the
    messages that lift every key and button still down, so a take-over that
    ends mid-chord (the page closed, control released or handed to another
    page) never leaves the agent typing with a stuck modifier.
    """

    def __init__(self) -> None:
        # keysym -> the QEMU keycode it went down with (None: a plain KeyEvent).
        self.keys: dict[int, int | None] = {}
        self.buttons = 0
        self.x = 0
        self.y = 0

    def __bool__(self) -> bool:
        return bool(self.keys) or self.buttons != 0

    def observe(self, data: bytes) -> None:
        """Note what ``data`` (whole client messages, as the filter passes them) pressed."""
        view = data
        while view:
            size = message_length(view)
            if size is None:
                return  # cannot happen: the filter only passes whole messages
            kind = view[0]
            if kind == KEY_EVENT:
                keysym = int.from_bytes(view[4:8], "big")
                if view[1]:
                    self.keys[keysym] = None
                else:
                    self.keys.pop(keysym, None)
            elif kind == QEMU and view[1] == 0:
                keysym = int.from_bytes(view[4:8], "big")
                keycode = int.from_bytes(view[8:12], "big")
                if int.from_bytes(view[2:4], "big"):
                    self.keys[keysym] = keycode
                else:
                    self.keys.pop(keysym, None)
            elif kind == POINTER_EVENT:
                self.buttons = view[1]
                self.x = int.from_bytes(view[2:4], "big")
                self.y = int.from_bytes(view[4:6], "big")
            view = view[size:]

    def release(self) -> tuple[bytes, int]:
        """The messages that lift everything held, and how many; forgets it all."""
        out = bytearray()
        count = 0
        for keysym, keycode in self.keys.items():
            if keycode is None:
                out += key_event(keysym, False)
            else:
                # Up the same way it went down: the server tracks it by keycode.
                out += bytes([QEMU, 0]) + (0).to_bytes(2, "big")
                out += keysym.to_bytes(4, "big") + keycode.to_bytes(4, "big")
            count += 1
        if self.buttons:
            out += pointer_event(self.x, self.y, 0)
            count += 1
        self.keys.clear()
        self.buttons = 0
        return bytes(out), count


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
    input_changed: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve one noVNC connection.

    ``resolve`` names the desktop (raising :class:`DesktopUnavailable` with the reason
    when there is none); ``allow_input`` is asked for every client message
    whether pointer and key input may pass (this connection holds the
    take-over). ``input_changed`` waits until that answer may have changed:
    then keys and buttons this connection still holds are released if its
    input no longer passes; they are released when it closes, too.
    """
    await ws.accept()
    browser = _BrowserStream(ws)
    try:
        target = await resolve()
    except DesktopUnavailable as exc:
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

        await _relay(ws, browser, tcp_reader, tcp_writer, allow_input, stats, input_changed)
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
    input_changed: Callable[[], Awaitable[None]] | None,
) -> None:
    messages = ClientMessageFilter()
    held = HeldInput()
    # The browser's messages and the gateway's own key-ups share the socket;
    # each write is whole messages, and the lock keeps them in order.
    writing = asyncio.Lock()

    async def send_up(data: bytes) -> None:
        async with writing:
            tcp_writer.write(data)
            await tcp_writer.drain()
        stats.bytes_up += len(data)

    async def release_held() -> None:
        data, count = held.release()
        if count:
            await send_up(data)
            stats.released_input += count
            log.info("VNC bridge: released %d key(s)/button(s) held when input ended", count)

    async def upstream() -> tuple[int, str]:
        pending = bytes(browser.buf)
        browser.buf.clear()
        while True:
            dropped = messages.dropped
            data = messages.feed(pending, allow_input=allow_input())
            stats.dropped_input += messages.dropped - dropped
            if data:
                held.observe(data)
                await send_up(data)
            pending = await browser.message()

    async def watch_input() -> tuple[int, str]:
        while True:
            if input_changed is None:
                await asyncio.Event().wait()
            else:
                await input_changed()
            if held and not allow_input():
                await release_held()

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
    watch = asyncio.create_task(watch_input())
    try:
        done, _ = await asyncio.wait({up, down, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down, watch):
            task.cancel()
        await asyncio.gather(up, down, watch, return_exceptions=True)
        if held and not tcp_writer.is_closing():
            # The connection is going away with keys still down.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(release_held(), RELEASE_TIMEOUT)
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
