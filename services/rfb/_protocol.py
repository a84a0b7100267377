"""Wire constants, the byte-stream interfaces and the fixed-layout messages (RFC 6143)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from ._caps import check

PROTOCOL_38 = b"RFB 003.008\n"

SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC_AUTH = 2

# Server-to-client message types.
FRAMEBUFFER_UPDATE = 0
SET_COLOUR_MAP_ENTRIES = 1
BELL = 2
SERVER_CUT_TEXT = 3

# Client-to-server message types (RFC 6143 section 7.5 plus the extensions
# noVNC sends when the server advertises them).
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250
SET_DESKTOP_SIZE = 251
QEMU = 255

ENCODING_RAW = 0
ENCODING_COPYRECT = 1
ENCODING_DESKTOP_SIZE = -223

# 32 bpp, depth 24, little endian, true colour, R at 16, G at 8, B at 0: in
# memory that is B,G,R,X, which Pillow reads as "BGRX" without a copy.
PIXEL_FORMAT_BGRX = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


class ByteReader(Protocol):
    """What the protocol code reads from: an asyncio.StreamReader or a WebSocket adapter."""

    async def readexactly(self, n: int, /) -> bytes: ...


class ByteWriter(Protocol):
    """What the protocol code writes to: an asyncio.StreamWriter or a WebSocket adapter."""

    def write(self, data: bytes, /) -> None: ...

    async def drain(self) -> None: ...


async def read_u32(reader: ByteReader) -> int:
    value: int = struct.unpack(">I", await reader.readexactly(4))[0]
    return value


async def read_capped(reader: ByteReader, what: str, limit: int) -> bytes:
    """Read a u32 length and that many bytes, refusing a length over ``limit``."""
    length = check(what, await read_u32(reader), limit)
    return await reader.readexactly(length)


@dataclass(frozen=True)
class ServerInit:
    """The server's first message after security: desktop size, pixel format, name."""

    width: int
    height: int
    pixel_format: bytes
    name: bytes

    def encode(self) -> bytes:
        return (
            struct.pack(">HH", self.width, self.height)
            + self.pixel_format
            + struct.pack(">I", len(self.name))
            + self.name
        )


def set_pixel_format(pixel_format: bytes = PIXEL_FORMAT_BGRX) -> bytes:
    return b"\x00\x00\x00\x00" + pixel_format


def set_encodings(encodings: list[int]) -> bytes:
    return struct.pack(f">BxH{len(encodings)}i", SET_ENCODINGS, len(encodings), *encodings)


def update_request(width: int, height: int, incremental: bool) -> bytes:
    return struct.pack(">BBHHHH", FRAMEBUFFER_UPDATE_REQUEST, incremental, 0, 0, width, height)


def pointer_event(x: int, y: int, mask: int) -> bytes:
    return struct.pack(">BBHH", POINTER_EVENT, mask, x, y)


def key_event(keysym: int, down: bool) -> bytes:
    return struct.pack(">BBxxI", KEY_EVENT, down, keysym)
