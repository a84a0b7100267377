"""The parts of the RFB (VNC) protocol the gateway needs to sit in the middle.

The gateway is a VNC *client* towards the sandbox (it knows the VNC password)
and a VNC *server* towards the browser (security type None, RFB 3.8), so the
password never reaches a browser. After both handshakes it relays the stream,
parsing only the browser's messages so that input can be withheld while the
agent owns the desktop.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from selfagent.errors import RFBError, VncAuthFailed

PROTOCOL_38 = b"RFB 003.008\n"

SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC_AUTH = 2

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

# Messages that change what is on the desktop; withheld unless the person has
# taken over. SetDesktopSize and XVP (reboot/shutdown) belong here as well.
INPUT_TYPES = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, SET_DESKTOP_SIZE, XVP, QEMU})

# Caps that keep a hostile browser from making the parser buffer without end.
MAX_CUT_TEXT = 1 << 20
MAX_ENCODINGS = 1024
MAX_FENCE_PAYLOAD = 64
MAX_SCREENS = 16




def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """Answer a VncAuth challenge: DES-ECB with the password as key.

    VNC's DES key is the first 8 bytes of the password, zero padded, with the
    bits of every byte reversed (a quirk of the original implementation).
    """
    if len(challenge) != 16:
        raise RFBError(f"VncAuth challenge must be 16 bytes, got {len(challenge)}")
    raw = password.encode("latin-1", errors="replace")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in raw)
    # A 24-byte TripleDES key made of one key three times is single DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


@dataclass(frozen=True)
class ServerInit:
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


async def _read_reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    data = await reader.readexactly(min(length, 4096))
    return data.decode("utf-8", errors="replace")


async def client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str
) -> ServerInit:
    """Log in to a VNC server as a shared client and return its ServerInit."""
    try:
        version = await reader.readexactly(12)
    except asyncio.IncompleteReadError as exc:
        raise RFBError("the VNC server closed the connection before its greeting") from exc
    if not version.startswith(b"RFB ") or version[-1:] != b"\n":
        raise RFBError(f"not a VNC server (greeting {version[:12]!r})")
    try:
        major, minor = int(version[4:7]), int(version[8:11])
    except ValueError as exc:
        raise RFBError(f"bad RFB version {version!r}") from exc
    minor = 8 if (major, minor) >= (3, 8) else (7 if minor == 7 else 3)
    writer.write(b"RFB 003.%03d\n" % minor)
    await writer.drain()

    if minor >= 7:
        (count,) = await reader.readexactly(1)
        if count == 0:
            raise RFBError(f"the VNC server refused the connection: {await _read_reason(reader)}")
        offered = set(await reader.readexactly(count))
        if SEC_NONE in offered:
            sec = SEC_NONE
        elif SEC_VNC_AUTH in offered:
            sec = SEC_VNC_AUTH
        else:
            raise RFBError(f"the VNC server offers no supported security type ({sorted(offered)})")
        writer.write(bytes([sec]))
    else:
        (sec,) = struct.unpack(">I", await reader.readexactly(4))
        if sec == SEC_INVALID:
            raise RFBError(f"the VNC server refused the connection: {await _read_reason(reader)}")
        if sec not in (SEC_NONE, SEC_VNC_AUTH):
            raise RFBError(f"the VNC server demands unsupported security type {sec}")

    if sec == SEC_VNC_AUTH:
        if not password:
            raise VncAuthFailed("the VNC server wants a password and none is configured")
        challenge = await reader.readexactly(16)
        writer.write(vnc_auth_response(password, challenge))
    await writer.drain()

    if sec == SEC_VNC_AUTH or minor >= 8:
        (result,) = struct.unpack(">I", await reader.readexactly(4))
        if result != 0:
            reason = await _read_reason(reader) if minor >= 8 else ""
            raise VncAuthFailed(
                "VNC authentication failed (wrong GATEWAY_VNC_PASSWORD?)"
                + (f": {reason}" if reason else "")
            )

    writer.write(b"\x01")  # ClientInit: shared, so the agent's own connection stays up
    await writer.drain()
    head = await reader.readexactly(24)
    width, height = struct.unpack(">HH", head[:4])
    (name_len,) = struct.unpack(">I", head[20:24])
    name = await reader.readexactly(min(name_len, 4096))
    if name_len > 4096:
        await reader.readexactly(name_len - 4096)
    return ServerInit(width=width, height=height, pixel_format=head[4:20], name=name)


def refusal(reason: str) -> bytes:
    """What an RFB 3.8 server sends to reject a client right after the version."""
    data = reason.encode()
    return b"\x00" + struct.pack(">I", len(data)) + data


def message_length(buf: bytes | bytearray) -> int | None:
    """Length of the client message at the start of ``buf``.

    None means "need more bytes"; RFBError means the stream cannot be parsed
    (an unknown type would desynchronise every message after it).
    """
    if not buf:
        return None
    kind = buf[0]
    fixed = {
        SET_PIXEL_FORMAT: 20,
        FRAMEBUFFER_UPDATE_REQUEST: 10,
        KEY_EVENT: 8,
        POINTER_EVENT: 6,
        ENABLE_CONTINUOUS_UPDATES: 10,
        XVP: 4,
    }
    if kind in fixed:
        return fixed[kind] if len(buf) >= fixed[kind] else None
    if kind == SET_ENCODINGS:
        if len(buf) < 4:
            return None
        count = int.from_bytes(buf[2:4], "big")
        if count > MAX_ENCODINGS:
            raise RFBError(f"SetEncodings with {count} encodings")
        return 4 + 4 * count
    if kind == CLIENT_CUT_TEXT:
        if len(buf) < 8:
            return None
        length = int.from_bytes(buf[4:8], "big", signed=True)
        # A negative length is the extended clipboard format; its size is |length|.
        size = abs(length)
        if size > MAX_CUT_TEXT:
            raise RFBError(f"clipboard text of {size} bytes exceeds the {MAX_CUT_TEXT} limit")
        return 8 + size
    if kind == CLIENT_FENCE:
        if len(buf) < 9:
            return None
        size = buf[8]
        if size > MAX_FENCE_PAYLOAD:
            raise RFBError(f"fence payload of {size} bytes")
        return 9 + size
    if kind == SET_DESKTOP_SIZE:
        if len(buf) < 8:
            return None
        screens = buf[6]
        if screens > MAX_SCREENS:
            raise RFBError(f"SetDesktopSize with {screens} screens")
        return 8 + 16 * screens
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
