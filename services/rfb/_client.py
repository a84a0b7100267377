"""A small asyncio RFB client that keeps a live copy of the framebuffer.

Why not drive vncdotool directly: vncdotool is Twisted-based and captures a
screenshot by asking for a full refresh and PNG-encoding it (40-150 ms). We
want a framebuffer that is always current (continuous incremental updates),
screenshots answered from memory in a few milliseconds, and the time of the
last screen change, which is what lets us detect that the screen has settled
instead of sleeping a fixed delay.

Only what a loopback/LAN link needs: RFB 3.3-3.8, security None or VncAuth,
Raw + CopyRect + DesktopSize. Raw is the fastest encoding to decode in Python;
compressed encodings would cost more CPU than they save on a local link.

The server is untrusted (it runs in the sandbox): every length and size it
announces is checked against ``_caps`` before anything is read or allocated,
and every rectangle must lie inside the framebuffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time

from selfagent.errors import RFBError

from ._caps import MAX_CUT_TEXT, MAX_RECTANGLES, check, check_screen
from ._handshake import client_handshake
from ._protocol import (
    BELL,
    ENCODING_COPYRECT,
    ENCODING_DESKTOP_SIZE,
    ENCODING_RAW,
    FRAMEBUFFER_UPDATE,
    SERVER_CUT_TEXT,
    SET_COLOUR_MAP_ENTRIES,
    key_event,
    pointer_event,
    read_u32,
    set_encodings,
    set_pixel_format,
    update_request,
)

log = logging.getLogger(__name__)

# Button mask bits (RFC 6143 7.5.5).
BUTTON_BITS = {"left": 1, "middle": 2, "right": 4}
WHEEL_BITS = {"up": 8, "down": 16, "left": 32, "right": 64}

BYTES_PER_PIXEL = 4
# Clipboard text is skipped, never kept: read it in pieces of this size.
_SKIP_CHUNK = 1 << 16


class RFBClient:
    """One VNC connection. ``connect`` performs the handshake and starts the reader.

    ``framebuffer`` holds ``width * height`` BGRX pixels, row after row (the
    32-bit little-endian true-colour format asked for), ready for
    ``PIL.Image.frombuffer(..., "raw", "BGRX", 0, 1)``.
    """

    def __init__(self, host: str, port: int, password: str | None) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.width = 0
        self.height = 0
        self.name = ""
        self.framebuffer = bytearray()
        self.last_change = 0.0
        self.updates = 0
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        # Why the reader stopped; None while it runs or after a clean close.
        self.error: BaseException | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_frame = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed.is_set()

    async def connect(self, timeout: float = 5.0) -> None:
        """Log in and wait for the first full frame; RFBError if either fails."""
        where = f"{self.host}:{self.port}"
        try:
            await asyncio.wait_for(self._handshake(), timeout)
        except TimeoutError as exc:
            await self.close()
            raise RFBError(f"VNC handshake with {where} timed out") from exc
        except OSError as exc:
            await self.close()
            raise RFBError(f"cannot connect to VNC at {where}: {exc}") from exc
        except RFBError:
            await self.close()
            raise
        self._task = asyncio.create_task(self._read_loop(), name="rfb-reader")
        self._request_update(incremental=False)
        first = asyncio.ensure_future(self._first_frame.wait())
        ended = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({first, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
            ended.cancel()
        if self._first_frame.is_set():
            return
        error = self.error
        await self.close()
        if isinstance(error, RFBError):
            raise error
        if error is not None:
            raise RFBError(f"VNC connection to {where} lost before the first frame: {error}")
        raise RFBError(f"VNC server {where} sent no framebuffer")

    async def _handshake(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._reader, self._writer = reader, writer
        # Shared: the gateway's viewers stay connected.
        init = (await client_handshake(reader, writer, self.password, shared=True)).server_init
        self.name = init.name.decode("utf-8", "replace")
        self._resize(init.width, init.height)
        writer.write(set_pixel_format())
        writer.write(set_encodings([ENCODING_COPYRECT, ENCODING_RAW, ENCODING_DESKTOP_SIZE]))
        await writer.drain()

    def _resize(self, width: int, height: int) -> None:
        self.width, self.height = check_screen(width, height)
        self.framebuffer = bytearray(width * height * BYTES_PER_PIXEL)

    def _request_update(self, incremental: bool) -> None:
        if self._writer is None:
            return
        self._writer.write(update_request(self.width, self.height, incremental))

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                kind = (await reader.readexactly(1))[0]
                if kind == FRAMEBUFFER_UPDATE:
                    await self._read_update(reader)
                    # Ask for the next change right away: the server holds the
                    # request until something changes, so our copy stays live.
                    self._request_update(incremental=True)
                elif kind == SET_COLOUR_MAP_ENTRIES:
                    # Never used with true colour; skipped. After the type: one
                    # byte of padding, u16 first colour, u16 count (6 bytes each).
                    _first, count = struct.unpack(">xHH", await reader.readexactly(5))
                    await reader.readexactly(count * 6)
                elif kind == BELL:
                    pass
                elif kind == SERVER_CUT_TEXT:
                    await reader.readexactly(3)
                    size = check("clipboard text", await read_u32(reader), MAX_CUT_TEXT)
                    while size:
                        size -= len(await reader.readexactly(min(size, _SKIP_CHUNK)))
                else:
                    raise RFBError(f"unknown server message type {kind}")
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.IncompleteReadError, RFBError) as exc:
            self.error = exc
            log.warning("VNC connection lost: %s", exc)
        except Exception as exc:
            # A server update we could not apply: drop the link (the
            # supervisor reconnects) rather than keep a half-updated screen.
            self.error = exc
            log.exception("VNC update could not be applied; reconnecting")
        finally:
            self.closed.set()
            self.changed.set()

    async def _read_update(self, reader: asyncio.StreamReader) -> None:
        (count,) = struct.unpack(">xH", await reader.readexactly(3))
        check("framebuffer update", count, MAX_RECTANGLES, "rectangles")
        changed = False
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await reader.readexactly(12))
            if encoding == ENCODING_DESKTOP_SIZE:
                self._resize(w, h)
                self._request_update(incremental=False)
                changed = True
                continue
            if x + w > self.width or y + h > self.height:
                raise RFBError(
                    f"rectangle {w}x{h} at {x},{y} lies outside the "
                    f"{self.width}x{self.height} framebuffer"
                )
            if encoding == ENCODING_RAW:
                # Bounded by the framebuffer size, itself capped.
                data = await reader.readexactly(w * h * BYTES_PER_PIXEL)
                self._put(x, y, w, h, memoryview(data))
            elif encoding == ENCODING_COPYRECT:
                sx, sy = struct.unpack(">HH", await reader.readexactly(4))
                if sx + w > self.width or sy + h > self.height:
                    raise RFBError(f"CopyRect source {w}x{h} at {sx},{sy} is off screen")
                # Copy the source out first: it may overlap the destination.
                self._put(x, y, w, h, memoryview(self._get(sx, sy, w, h)))
            else:
                raise RFBError(f"server used an encoding we did not ask for: {encoding}")
            changed = changed or (w > 0 and h > 0)
        self.updates += 1
        if changed:
            self.last_change = time.monotonic()
            self.changed.set()
        self._first_frame.set()

    def _get(self, x: int, y: int, w: int, h: int) -> bytes:
        stride, row = self.width * BYTES_PER_PIXEL, w * BYTES_PER_PIXEL
        start = y * stride + x * BYTES_PER_PIXEL
        if w == self.width:
            return bytes(self.framebuffer[start : start + h * row])
        return b"".join(
            self.framebuffer[start + i * stride : start + i * stride + row] for i in range(h)
        )

    def _put(self, x: int, y: int, w: int, h: int, pixels: memoryview) -> None:
        stride, row = self.width * BYTES_PER_PIXEL, w * BYTES_PER_PIXEL
        start = y * stride + x * BYTES_PER_PIXEL
        if w == self.width:  # whole rows: one contiguous copy
            self.framebuffer[start : start + h * row] = pixels
            return
        for i in range(h):
            at = start + i * stride
            self.framebuffer[at : at + row] = pixels[i * row : (i + 1) * row]

    # --- input --------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not self.connected or self._writer is None:
            raise RFBError("VNC connection is down")
        self._writer.write(data)

    async def flush(self) -> None:
        if self._writer is None:
            raise RFBError("VNC connection is down")
        try:
            await self._writer.drain()
        except (OSError, ConnectionError) as exc:
            raise RFBError(f"VNC connection lost: {exc}") from exc

    def pointer(self, x: int, y: int, mask: int = 0) -> None:
        self._send(pointer_event(x, y, mask))

    def key(self, keysym: int, down: bool) -> None:
        self._send(key_event(keysym, down))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
        self.closed.set()
