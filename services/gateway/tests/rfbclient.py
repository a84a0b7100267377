"""A minimal RFB client over the gateway's WebSocket, for tests.

It logs in with the package's own handshake (``selfagent.rfb``), asks for
Raw encoding and 32-bit pixels, reads real framebuffer pixels through
``/ws/vnc`` and sends pointer events.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from selfagent.rfb import (
    ENCODING_RAW,
    SEC_NONE,
    Handshake,
    client_handshake,
    pointer_event,
    set_encodings,
    set_pixel_format,
    update_request,
)


@dataclass
class WsRfbClient:
    ws: ClientConnection
    buf: bytearray = field(default_factory=bytearray)
    width: int = 0
    height: int = 0
    name: str = ""
    pixels: bytearray = field(default_factory=bytearray)
    _out: bytearray = field(default_factory=bytearray)

    @classmethod
    async def open(cls, url: str, headers: dict[str, str], **kw: Any) -> WsRfbClient:
        # No cap on unread frames: a test that stops reading updates must still
        # close at once. With a full queue the client stops reading the socket,
        # never sees the server's close frame and waits out its close timeout.
        ws = await connect(url, additional_headers=headers, max_size=None, max_queue=None, **kw)
        client = cls(ws)
        await client._handshake()
        return client

    async def _more(self) -> None:
        data = await self.ws.recv()
        assert isinstance(data, bytes), f"text frame on the VNC socket: {data!r}"
        self.buf += data

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def read(self, size: int) -> bytes:
        while len(self.buf) < size:
            await self._more()
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    # The byte-stream interface client_handshake reads and writes.
    async def readexactly(self, size: int) -> bytes:
        return await self.read(size)

    def write(self, data: bytes) -> None:
        self._out += data

    async def drain(self) -> None:
        data, self._out = bytes(self._out), bytearray()
        await self.send(data)

    async def _handshake(self) -> None:
        init = (await self._login()).server_init
        self.width, self.height = init.width, init.height
        self.name = init.name.decode(errors="replace")
        self.pixels = bytearray(self.width * self.height * 4)
        await self.send(set_pixel_format())  # BGRX
        await self.send(set_encodings([ENCODING_RAW]))

    async def _login(self) -> Handshake:
        login = await client_handshake(self, self, password=None)
        assert login.server_version == (3, 8), login.server_version
        assert login.offered == (SEC_NONE,), f"gateway should offer only None, offered {login}"
        return login

    async def request_update(self, incremental: bool = False) -> None:
        await self.send(update_request(self.width, self.height, incremental))

    async def read_update(self) -> int:
        """Read server messages until one framebuffer update was applied; returns its rects."""
        while True:
            (kind,) = await self.read(1)
            if kind == 0:
                (rects,) = struct.unpack(">xH", await self.read(3))
                for _ in range(rects):
                    x, y, w, h, enc = struct.unpack(">HHHHi", await self.read(12))
                    assert enc == 0, f"unexpected encoding {enc}"
                    data = await self.read(w * h * 4)
                    for row in range(h):
                        start = ((y + row) * self.width + x) * 4
                        self.pixels[start : start + w * 4] = data[row * w * 4 : (row + 1) * w * 4]
                return rects
            if kind == 1:
                _, _, colours = struct.unpack(">xHH", await self.read(5))
                await self.read(colours * 6)
            elif kind == 2:
                pass
            elif kind == 3:
                (length,) = struct.unpack(">xxxI", await self.read(7))
                await self.read(length)
            else:
                raise AssertionError(f"unexpected server message {kind}")

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * 4
        b, g, r = self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]
        return r, g, b

    async def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        await self.send(pointer_event(x, y, buttons))

    async def key(self, keysym: int, down: bool) -> None:
        await self.send(struct.pack(">BBxxI", 4, down, keysym))  # KeyEvent

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class TcpRfbClient(WsRfbClient):
    """The same client straight to a VNC server (with its password).

    Gives tests a reference framebuffer that does not pass through the bridge.
    """

    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    password: str = ""

    @classmethod
    async def open_tcp(cls, port: int, password: str) -> TcpRfbClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(ws=None, reader=reader, writer=writer, password=password)  # type: ignore[arg-type]
        await client._handshake()
        return client

    async def _login(self) -> Handshake:
        return await client_handshake(self, self, self.password)

    async def _more(self) -> None:
        assert self.reader is not None
        data = await self.reader.read(1 << 18)
        if not data:
            raise ConnectionError("VNC server closed")
        self.buf += data

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        assert self.writer is not None
        self.writer.close()
