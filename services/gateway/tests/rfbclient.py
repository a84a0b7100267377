"""A minimal RFB client over the gateway's WebSocket, for tests.

It speaks just enough RFB 3.8 (security None, Raw encoding, 32-bit pixels)
to read real framebuffer pixels through ``/ws/vnc`` and send pointer events.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from selfagent.gateway.rfb import client_handshake


class RefusedError(Exception):
    pass


@dataclass
class WsRfbClient:
    ws: ClientConnection
    buf: bytearray = field(default_factory=bytearray)
    width: int = 0
    height: int = 0
    name: str = ""
    pixels: bytearray = field(default_factory=bytearray)

    @classmethod
    async def open(cls, url: str, headers: dict[str, str], **kw: Any) -> WsRfbClient:
        ws = await connect(url, additional_headers=headers, max_size=None, **kw)
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

    async def _handshake(self) -> None:
        await self._security()
        head = await self.read(24)
        self.width, self.height = struct.unpack(">HH", head[:4])
        (name_len,) = struct.unpack(">I", head[20:24])
        self.name = (await self.read(name_len)).decode(errors="replace")
        self.pixels = bytearray(self.width * self.height * 4)
        # 32 bpp, depth 24, little endian, true colour, BGRX byte order.
        pixel_format = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        await self.send(b"\x00\x00\x00\x00" + pixel_format)
        await self.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only

    async def _security(self) -> None:
        version = await self.read(12)
        assert version == b"RFB 003.008\n", version
        await self.send(b"RFB 003.008\n")
        (count,) = await self.read(1)
        if count == 0:
            (length,) = struct.unpack(">I", await self.read(4))
            raise RefusedError((await self.read(length)).decode())
        types = await self.read(count)
        assert types == b"\x01", f"gateway should offer only None, offered {list(types)}"
        await self.send(b"\x01")
        (result,) = struct.unpack(">I", await self.read(4))
        assert result == 0
        await self.send(b"\x01")

    async def request_update(self, incremental: bool = False) -> None:
        await self.send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

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
        await self.send(struct.pack(">BBHH", 5, buttons, x, y))

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class TcpRfbClient(WsRfbClient):
    """The same client straight to a VNC server, logging in with the gateway's own code.

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

    async def _security(self) -> None:
        assert self.reader is not None and self.writer is not None
        init = await client_handshake(self.reader, self.writer, self.password)
        # Hand ServerInit back to the shared parser in _handshake.
        self.buf[:0] = init.encode()

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
