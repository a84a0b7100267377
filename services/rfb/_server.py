"""The server side, as the gateway plays it towards the browser.

The gateway offers the browser RFB 3.8 with security None (the gateway's
token already admitted it), hands over the ServerInit it got from the
sandbox, and from then on parses only what the browser sends, so that input
can be withheld while the agent owns the desktop.
"""

from __future__ import annotations

import struct

from selfagent.errors import RFBError

from ._caps import MAX_CUT_TEXT, MAX_ENCODINGS, MAX_FENCE_PAYLOAD, MAX_REASON, MAX_SCREENS, check
from ._protocol import (
    CLIENT_CUT_TEXT,
    CLIENT_FENCE,
    ENABLE_CONTINUOUS_UPDATES,
    FRAMEBUFFER_UPDATE_REQUEST,
    KEY_EVENT,
    POINTER_EVENT,
    PROTOCOL_38,
    QEMU,
    SEC_NONE,
    SET_DESKTOP_SIZE,
    SET_ENCODINGS,
    SET_PIXEL_FORMAT,
    XVP,
    ByteReader,
    ByteWriter,
    ServerInit,
)

# Messages that change what is on the desktop; withheld unless the person has
# taken over. SetDesktopSize and XVP (reboot/shutdown) belong here as well.
INPUT_TYPES = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, SET_DESKTOP_SIZE, XVP, QEMU})

_FIXED_SIZES = {
    SET_PIXEL_FORMAT: 20,
    FRAMEBUFFER_UPDATE_REQUEST: 10,
    KEY_EVENT: 8,
    POINTER_EVENT: 6,
    ENABLE_CONTINUOUS_UPDATES: 10,
    XVP: 4,
}


def refusal(reason: str) -> bytes:
    """What an RFB 3.8 server sends to reject a client right after the version.

    Cut to the length every client here accepts, so the reason is shown
    rather than rejected as oversized.
    """
    data = reason.encode()[:MAX_REASON]
    return b"\x00" + struct.pack(">I", len(data)) + data


async def server_handshake(reader: ByteReader, writer: ByteWriter, init: ServerInit) -> None:
    """Play a server with no authentication up to and including ServerInit."""
    writer.write(PROTOCOL_38)
    await writer.drain()
    version = await reader.readexactly(12)
    if not version.startswith(b"RFB 003."):
        raise RFBError(f"not an RFB client (greeting {version!r})")
    minor = int(version[8:11]) if version[8:11].isdigit() else 0
    if minor >= 7:
        writer.write(bytes([1, SEC_NONE]))
        await writer.drain()
        (choice,) = await reader.readexactly(1)
        if choice != SEC_NONE:
            raise RFBError(f"client chose security type {choice}, only None is offered")
        if minor >= 8:
            writer.write(b"\x00\x00\x00\x00")  # SecurityResult: OK
            await writer.drain()
    else:
        writer.write(SEC_NONE.to_bytes(4, "big"))
        await writer.drain()
    await reader.readexactly(1)  # ClientInit; the upstream connection is always shared
    writer.write(init.encode())
    await writer.drain()


def message_length(buf: bytes | bytearray) -> int | None:
    """Length of the client message at the start of ``buf``.

    None means "need more bytes"; RFBError means the stream cannot be parsed
    (an unknown type would desynchronise every message after it) or announces
    more than the caps allow.
    """
    if not buf:
        return None
    kind = buf[0]
    if kind in _FIXED_SIZES:
        return _FIXED_SIZES[kind] if len(buf) >= _FIXED_SIZES[kind] else None
    if kind == SET_ENCODINGS:
        if len(buf) < 4:
            return None
        count = check("SetEncodings", int.from_bytes(buf[2:4], "big"), MAX_ENCODINGS, "encodings")
        return 4 + 4 * count
    if kind == CLIENT_CUT_TEXT:
        if len(buf) < 8:
            return None
        # A negative length is the extended clipboard format; its size is |length|.
        size = abs(int.from_bytes(buf[4:8], "big", signed=True))
        return 8 + check("clipboard text", size, MAX_CUT_TEXT)
    if kind == CLIENT_FENCE:
        if len(buf) < 9:
            return None
        return 9 + check("fence payload", buf[8], MAX_FENCE_PAYLOAD)
    if kind == SET_DESKTOP_SIZE:
        if len(buf) < 8:
            return None
        return 8 + 16 * check("SetDesktopSize", buf[6], MAX_SCREENS, "screens")
    if kind == QEMU:
        if len(buf) < 2:
            return None
        if buf[1] == 0:  # extended key event, the only QEMU message noVNC sends
            return 12
        raise RFBError(f"unsupported QEMU client message subtype {buf[1]}")
    raise RFBError(f"unknown client message type {kind}")


class ClientMessageFilter:
    """Splits the browser's byte stream into RFB messages and keeps the allowed ones."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes, allow_input: bool) -> bytes:
        self._buf += data
        out = bytearray()
        while True:
            size = message_length(self._buf)
            if size is None or len(self._buf) < size:
                break
            if allow_input or self._buf[0] not in INPUT_TYPES:
                out += self._buf[:size]
            else:
                self.dropped += 1
            del self._buf[:size]
        # Everything buffered is at most one partial message, whose size is capped above.
        return bytes(out)
