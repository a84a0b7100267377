"""The client side of the RFB handshake: version, security, ClientInit, ServerInit.

One implementation for every client in the project (the actuator's live
framebuffer, the gateway's upstream login, the test clients).

Security preference: None when the server offers it, else VncAuth. VncAuth
only proves the client to the server, never the server to the client, so
when a server accepts None there is nothing to gain from it, and answering
a challenge the server chose would hand a hostile server material for
guessing the password offline. Xvnc as the sandbox starts it offers VncAuth
alone, so in practice the password is always used there.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from selfagent.errors import RFBError, VncAuthFailed, VncRefused

from ._auth import CHALLENGE_SIZE, vnc_auth_response
from ._caps import MAX_NAME, MAX_REASON, check, check_screen
from ._protocol import (
    SEC_INVALID,
    SEC_NONE,
    SEC_VNC_AUTH,
    ByteReader,
    ByteWriter,
    ServerInit,
    read_capped,
    read_u32,
)


@dataclass(frozen=True)
class Handshake:
    """What a completed client handshake learned."""

    server_version: tuple[int, int]  # as the server announced it
    version: tuple[int, int]  # what both sides speak: (3, 3), (3, 7) or (3, 8)
    offered: tuple[int, ...]  # security types the server listed (3.3: the one it imposed)
    security: int  # the type used
    server_init: ServerInit


def choose_security(offered: tuple[int, ...], password: str) -> int:
    """Pick from the server's list in the one order documented in the module docstring."""
    if SEC_NONE in offered:
        return SEC_NONE
    if SEC_VNC_AUTH in offered:
        if not password:
            raise VncAuthFailed("the VNC server wants a password and none is configured")
        return SEC_VNC_AUTH
    raise RFBError(f"the VNC server offers no supported security type ({sorted(offered)})")


async def client_handshake(
    reader: ByteReader, writer: ByteWriter, password: str | None, *, shared: bool = True
) -> Handshake:
    """Log in to a VNC server and read its ServerInit.

    ``shared`` keeps the server's other clients connected (the actuator and
    every gateway viewer use one desktop at once). A server that hangs up
    midway is an RFBError like any other protocol failure.
    """
    try:
        return await _handshake(reader, writer, password or "", shared)
    except asyncio.IncompleteReadError as exc:
        raise RFBError("the VNC server closed the connection during the handshake") from exc


async def _reason(reader: ByteReader, what: str) -> str:
    return (await read_capped(reader, what, MAX_REASON)).decode("utf-8", errors="replace")


async def _handshake(
    reader: ByteReader, writer: ByteWriter, password: str, shared: bool
) -> Handshake:
    greeting = await reader.readexactly(12)
    if not greeting.startswith(b"RFB ") or greeting[7:8] != b"." or greeting[11:] != b"\n":
        raise RFBError(f"not a VNC server (greeting {greeting!r})")
    try:
        server_version = (int(greeting[4:7]), int(greeting[8:11]))
    except ValueError as exc:
        raise RFBError(f"not a VNC server (greeting {greeting!r})") from exc
    if server_version < (3, 3):
        raise RFBError(f"unsupported RFB version {server_version[0]}.{server_version[1]}")
    # 3.3, 3.7 and 3.8 are the only versions; anything in between is 3.3
    # (RFC 6143 section 7.1.1) and anything later speaks 3.8.
    if server_version >= (3, 8):
        version = (3, 8)
    elif server_version == (3, 7):
        version = (3, 7)
    else:
        version = (3, 3)
    writer.write(b"RFB %03d.%03d\n" % version)
    await writer.drain()

    if version >= (3, 7):
        (count,) = await reader.readexactly(1)
        if count == 0:
            raise VncRefused(await _reason(reader, "refusal reason"))
        offered = tuple(await reader.readexactly(count))
        security = choose_security(offered, password)
        writer.write(bytes([security]))
        await writer.drain()
    else:
        security = await read_u32(reader)
        if security == SEC_INVALID:
            raise VncRefused(await _reason(reader, "refusal reason"))
        offered = (security,)
        if security not in (SEC_NONE, SEC_VNC_AUTH):
            raise RFBError(f"the VNC server demands unsupported security type {security}")
        choose_security(offered, password)

    if security == SEC_VNC_AUTH:
        challenge = await reader.readexactly(CHALLENGE_SIZE)
        writer.write(vnc_auth_response(password, challenge))
        await writer.drain()

    # SecurityResult: always after VncAuth, after None only from 3.8 on.
    has_result = security == SEC_VNC_AUTH or version >= (3, 8)
    if has_result and await read_u32(reader) != 0:
        detail = ""
        if version >= (3, 8):  # only 3.8 says why
            detail = ": " + await _reason(reader, "authentication failure reason")
        raise VncAuthFailed(f"VNC authentication failed{detail}")

    writer.write(b"\x01" if shared else b"\x00")  # ClientInit
    await writer.drain()
    head = await reader.readexactly(24)  # size, pixel format, name length
    width, height = check_screen(*struct.unpack(">HH", head[:4]))
    (name_length,) = struct.unpack(">I", head[20:24])
    name = await reader.readexactly(check("desktop name", name_length, MAX_NAME))
    return Handshake(
        server_version=server_version,
        version=version,
        offered=offered,
        security=security,
        server_init=ServerInit(width, height, head[4:20], name),
    )
