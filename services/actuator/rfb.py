"""A small asyncio RFB (VNC) client that keeps a live copy of the framebuffer.

Why not drive vncdotool directly: vncdotool is Twisted-based and captures a
screenshot by asking for a full refresh and PNG-encoding it (40-150 ms). We
want a framebuffer that is always current (continuous incremental updates),
screenshots answered from memory in a few milliseconds, and the time of the
last screen change, which is what lets us detect that the screen has settled
instead of sleeping a fixed delay.

Only what a loopback/LAN link needs: RFB 3.3-3.8, security None or VncAuth,
Raw + CopyRect + DesktopSize. Raw is the fastest encoding to decode in Python;
compressed encodings would cost more CPU than they save on a local link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from selfagent.errors import RFBError, VncAuthFailed

AuthenticationFailed = VncAuthFailed

log = logging.getLogger(__name__)

ENCODING_RAW = 0
ENCODING_COPYRECT = 1
ENCODING_DESKTOP_SIZE = -223

# Button mask bits (RFC 6143 7.5.5).
BUTTON_BITS = {"left": 1, "middle": 2, "right": 4}
WHEEL_BITS = {"up": 8, "down": 16, "left": 32, "right": 64}




def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """DES-encrypt the challenge with the password, as VncAuth specifies.

    RFB uses each key byte bit-reversed; 3DES with K1=K2=K3 is single DES.
    """
    key = password.encode("latin-1", errors="replace")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


Frame = npt.NDArray[np.uint8]


class RFBClient:
    """One VNC connection. ``connect`` performs the handshake and starts the reader."""

    def __init__(self, host: str, port: int, password: str | None) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.width = 0
        self.height = 0
        self.name = ""
        # BGRX pixels, as the 32-bit little-endian format we ask for.
        self.framebuffer: Frame = np.zeros((0, 0, 4), dtype=np.uint8)
        self.last_change = 0.0
        self.updates = 0
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.on_close: Callable[[BaseException | None], None] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_frame = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed.is_set()

    async def connect(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._handshake(), timeout)
        except TimeoutError as exc:
            await self.close()
            raise RFBError(f"VNC handshake with {self.host}:{self.port} timed out") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise RFBError(f"cannot connect to VNC at {self.host}:{self.port}: {exc}") from exc
        except RFBError:
            await self.close()
            raise
        self._task = asyncio.create_task(self._read_loop(), name="rfb-reader")
        self._request_update(incremental=False)
        try:
            await asyncio.wait_for(self._first_frame.wait(), timeout)
        except TimeoutError as exc:
            await self.close()
            raise RFBError("VNC server sent no framebuffer") from exc

    async def _handshake(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._reader, self._writer = reader, writer
        banner = await reader.readexactly(12)
        if not banner.startswith(b"RFB "):
            raise RFBError(f"not a VNC server (banner {banner!r})")
        try:
            major, minor = int(banner[4:7]), int(banner[8:11])
        except ValueError as exc:
            raise RFBError(f"not a VNC server (banner {banner!r})") from exc
        version = min((major, minor), (3, 8))
        writer.write(b"RFB %03d.%03d\n" % version)
        if version >= (3, 7):
            count = (await reader.readexactly(1))[0]
            if count == 0:
                raise RFBError(f"server refused: {await self._read_reason()}")
            offered = set(await reader.readexactly(count))
            if 2 in offered and self.password:
                chosen = 2
            elif 1 in offered:
                chosen = 1
            elif 2 in offered:
                raise AuthenticationFailed("VNC server requires a password and none is configured")
            else:
                raise RFBError(f"no supported security type among {sorted(offered)}")
            writer.write(bytes([chosen]))
        else:
            (chosen,) = struct.unpack(">I", await reader.readexactly(4))
            if chosen == 0:
                raise RFBError(f"server refused: {await self._read_reason()}")
        if chosen == 2:
            if not self.password:
                raise AuthenticationFailed("VNC server requires a password and none is configured")
            challenge = await reader.readexactly(16)
            writer.write(vnc_auth_response(self.password, challenge))
        if chosen == 2 or version >= (3, 8):
            (result,) = struct.unpack(">I", await reader.readexactly(4))
            if result != 0:
                reason = await self._read_reason() if version >= (3, 8) else "auth failed"
                raise AuthenticationFailed(f"VNC authentication failed: {reason}")
        writer.write(b"\x01")  # shared: the gateway's viewers stay connected
        header = await reader.readexactly(24)
        self.width, self.height = struct.unpack(">HH", header[:4])
        (name_length,) = struct.unpack(">I", header[20:24])
        self.name = (await reader.readexactly(name_length)).decode("utf-8", "replace")
        self.framebuffer = np.zeros((self.height, self.width, 4), dtype=np.uint8)
        # 32 bpp, depth 24, little endian, true colour, R at 16, G at 8, B at 0:
        # in memory that is B,G,R,X, which Pillow reads as "BGRX" without a copy.
        pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        writer.write(b"\x00\x00\x00\x00" + pixel_format)
        encodings = [ENCODING_COPYRECT, ENCODING_RAW, ENCODING_DESKTOP_SIZE]
        writer.write(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        await writer.drain()

    async def _read_reason(self) -> str:
        assert self._reader is not None
        (length,) = struct.unpack(">I", await self._reader.readexactly(4))
        return (await self._reader.readexactly(length)).decode("utf-8", "replace")

    def _request_update(self, incremental: bool) -> None:
        if self._writer is None:
            return
        self._writer.write(
            struct.pack(">BBHHHH", 3, 1 if incremental else 0, 0, 0, self.width, self.height)
        )

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        error: BaseException | None = None
        try:
            while True:
                kind = (await reader.readexactly(1))[0]
                if kind == 0:
                    await self._read_update(reader)
                    # Ask for the next change right away: the server holds the
                    # request until something changes, so our copy stays live.
                    self._request_update(incremental=True)
                elif kind == 1:
                    header = await reader.readexactly(5)
                    (count,) = struct.unpack(">H", header[3:5])
                    await reader.readexactly(count * 6)
                elif kind == 2:
                    pass
                elif kind == 3:
                    header = await reader.readexactly(7)
                    (length,) = struct.unpack(">I", header[3:7])
                    await reader.readexactly(length)
                else:
                    raise RFBError(f"unknown server message type {kind}")
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.IncompleteReadError, RFBError) as exc:
            error = exc
            log.warning("VNC connection lost: %s", exc)
        except Exception as exc:
            # A server update we could not apply: drop the link (the
            # supervisor reconnects) rather than keep a half-updated screen.
            error = exc
            log.exception("VNC update could not be applied; reconnecting")
        finally:
            self.closed.set()
            self.changed.set()
            if self.on_close is not None:
                self.on_close(error)

    async def _read_update(self, reader: asyncio.StreamReader) -> None:
        header = await reader.readexactly(3)
        (count,) = struct.unpack(">xH", header)
        changed = False
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await reader.readexactly(12))
            if encoding == ENCODING_RAW:
                data = await reader.readexactly(w * h * 4)
                if w and h:
                    self.framebuffer[y : y + h, x : x + w] = np.frombuffer(
                        data, dtype=np.uint8
                    ).reshape(h, w, 4)
                    changed = True
            elif encoding == ENCODING_COPYRECT:
                sx, sy = struct.unpack(">HH", await reader.readexactly(4))
                self.framebuffer[y : y + h, x : x + w] = self.framebuffer[
                    sy : sy + h, sx : sx + w
                ].copy()
                changed = True
            elif encoding == ENCODING_DESKTOP_SIZE:
                self.width, self.height = w, h
                self.framebuffer = np.zeros((h, w, 4), dtype=np.uint8)
                self._request_update(incremental=False)
                changed = True
            else:
                raise RFBError(f"server used an encoding we did not ask for: {encoding}")
        self.updates += 1
        if changed:
            self.last_change = time.monotonic()
            self.changed.set()
        self._first_frame.set()

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
        self._send(struct.pack(">BBHH", 5, mask, x, y))

    def key(self, keysym: int, down: bool) -> None:
        self._send(struct.pack(">BBxxI", 4, 1 if down else 0, keysym))

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
