"""A scripted RFB server on loopback, written for the tests: it says exactly what a test tells it.

The reference DES here is written independently of ``selfagent.rfb._auth``
(bit reversal by shifts, an 8-byte key given straight to the cipher), so a
server built on it checks the client's answer rather than agreeing with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# 32 bpp, depth 24, little endian, true colour, shifts 16/8/0: spelled out
# here rather than taken from the package under test.
PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])


def reference_vnc_response(password: bytes, challenge: bytes) -> bytes:
    key = bytes(
        sum(((byte >> bit) & 1) << (7 - bit) for bit in range(8))
        for byte in password[:8].ljust(8, b"\0")
    )
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def server_init(
    width: int = 64, height: int = 48, name: bytes = b"fake", name_length: int | None = None
) -> bytes:
    length = len(name) if name_length is None else name_length
    return struct.pack(">HH", width, height) + PIXEL_FORMAT + struct.pack(">I", length) + name


def rect_header(x: int, y: int, w: int, h: int, encoding: int) -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, encoding)


@dataclass
class Seen:
    """What the client sent during the handshake, for the test to check."""

    version: bytes = b""
    security: int | None = None
    response: bytes = b""
    shared: int | None = None


async def greet(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    offer: bytes = b"\x01",
    password: bytes | None = None,
    init: bytes | None = None,
    seen: Seen | None = None,
) -> None:
    """An RFB 3.8 login: offer ``offer``, check VncAuth against ``password``, send ServerInit."""
    seen = seen or Seen()
    writer.write(b"RFB 003.008\n")
    seen.version = await reader.readexactly(12)
    writer.write(bytes([len(offer)]) + offer)
    (seen.security,) = await reader.readexactly(1)
    ok = True
    if seen.security == 2:
        challenge = os.urandom(16)
        writer.write(challenge)
        seen.response = await reader.readexactly(16)
        ok = password is not None and seen.response == reference_vnc_response(password, challenge)
    if ok:
        writer.write(b"\x00\x00\x00\x00")
    else:
        reason = b"Authentication failure"
        writer.write(struct.pack(">II", 1, len(reason)) + reason)
        await writer.drain()
        return
    (seen.shared,) = await reader.readexactly(1)
    writer.write(server_init() if init is None else init)
    await writer.drain()


async def first_frame_request(reader: asyncio.StreamReader) -> None:
    """Skip what RFBClient sends after ServerInit: SetPixelFormat, SetEncodings, a request."""
    await reader.readexactly(20)
    (count,) = struct.unpack(">xH", await reader.readexactly(3))
    await reader.readexactly(4 * count)
    await reader.readexactly(10)


@contextlib.asynccontextmanager
async def fake_server(script: Script) -> AsyncIterator[int]:
    """Serve ``script`` to each connection; yield the port.

    After the script the connection stays open until the client hangs up,
    so a client waiting for bytes that were announced but never sent hangs
    (and the test sees it) instead of being rescued by an end of stream.
    """
    handlers: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
            await writer.drain()
            while await reader.read(1 << 16):
                pass
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(run(reader, writer))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
