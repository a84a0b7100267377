"""VncAuth, the client handshake and the gateway's server side, against scripted peers."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from selfagent.errors import RFBError, VncAuthFailed, VncRefused
from selfagent.rfb import (
    INPUT_TYPES,
    PROTOCOL_38,
    ClientMessageFilter,
    Handshake,
    ServerInit,
    client_handshake,
    message_length,
    refusal,
    server_handshake,
    vnc_auth_response,
)

from .fakeserver import PIXEL_FORMAT, Seen, fake_server, greet, reference_vnc_response


def test_vnc_auth_response_matches_the_published_des_vector() -> None:
    # The classic DES example (key 133457799BBCDFF1, plaintext 0123456789ABCDEF,
    # ciphertext 85E813540F0AB405). VNC reverses the bits of each key byte, so
    # the password is those key bytes reversed: C8 2C EA 9E D9 3D FB 8F.
    password = bytes.fromhex("C82CEA9ED93DFB8F").decode("latin-1")
    challenge = bytes.fromhex("0123456789ABCDEF") * 2
    assert vnc_auth_response(password, challenge) == bytes.fromhex("85E813540F0AB405") * 2


@pytest.mark.parametrize("password", ["", "secret", "exactly8", "longer than eight bytes"])
def test_vnc_auth_response_matches_an_independent_des(password: str) -> None:
    challenge = os.urandom(16)
    expected = reference_vnc_response(password.encode(), challenge)
    assert vnc_auth_response(password, challenge) == expected


def test_vnc_auth_response_rejects_a_short_challenge() -> None:
    with pytest.raises(RFBError, match="16 bytes, got 8"):
        vnc_auth_response("x", b"\0" * 8)


class _SendOnDrain:
    """A writer that sends only on drain, as the WebSocket adapters do.

    Over it, a handshake that reads before draining what it wrote waits forever.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.pending += data

    async def drain(self) -> None:
        self.writer.write(bytes(self.pending))
        self.pending.clear()
        await self.writer.drain()


async def _login(port: int, password: str | None) -> Handshake:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(client_handshake(reader, _SendOnDrain(writer), password), 5)
    finally:
        writer.close()


async def test_handshake_with_security_none() -> None:
    seen = Seen()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, seen=seen, init=_init_bytes(800, 600, b"desk"))

    async with fake_server(script) as port:
        login = await _login(port, None)
    assert login == _handshake_fields((3, 8), (1,), 1, ServerInit(800, 600, PIXEL_FORMAT, b"desk"))
    assert seen.version == PROTOCOL_38 and seen.security == 1 and seen.shared == 1


async def test_handshake_with_vnc_auth() -> None:
    seen = Seen()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, offer=b"\x02", password=b"s3cret", seen=seen)

    async with fake_server(script) as port:
        login = await _login(port, "s3cret")
    assert login.security == 2 and seen.shared == 1
    assert len(seen.response) == 16


async def test_vnc_auth_with_a_wrong_password_says_so() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, offer=b"\x02", password=b"right")

    async with fake_server(script) as port:
        with pytest.raises(VncAuthFailed, match="authentication failed: Authentication failure"):
            await _login(port, "wrong")


async def test_vnc_auth_without_a_password_is_refused_before_answering() -> None:
    seen = Seen()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, offer=b"\x02", seen=seen)

    async with fake_server(script) as port:
        with pytest.raises(VncAuthFailed, match="none is configured"):
            await _login(port, "")
    assert seen.security is None and seen.response == b""


async def test_none_is_preferred_to_vnc_auth_even_with_a_password() -> None:
    seen = Seen()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, offer=b"\x13\x02\x01", password=b"pw", seen=seen)

    async with fake_server(script) as port:
        login = await _login(port, "pw")
    assert seen.security == 1 and seen.response == b""
    assert login.offered == (19, 2, 1)


async def test_no_supported_security_type() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, offer=b"\x13\x10")

    async with fake_server(script) as port:
        with pytest.raises(RFBError, match=r"no supported security type \(\[16, 19\]\)"):
            await _login(port, "pw")


@pytest.mark.parametrize("greeting", [b"RFB 003.003\n", b"RFB 003.005\n"])
async def test_rfb_33_server_imposes_vnc_auth(greeting: bytes) -> None:
    seen = Seen()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        seen.version = await reader.readexactly(12)
        challenge = os.urandom(16)
        writer.write(struct.pack(">I", 2) + challenge)
        seen.response = await reader.readexactly(16)
        ok = seen.response == reference_vnc_response(b"pw33", challenge)
        writer.write(struct.pack(">I", 0 if ok else 1))
        if ok:
            (seen.shared,) = await reader.readexactly(1)
            writer.write(_init_bytes(32, 16, b"old"))

    async with fake_server(script) as port:
        login = await _login(port, "pw33")
    assert seen.version == b"RFB 003.003\n" and seen.shared == 1
    assert login.version == (3, 3)
    assert login.server_init == ServerInit(32, 16, PIXEL_FORMAT, b"old")


async def test_refusal_carries_the_servers_reason() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PROTOCOL_38)
        await reader.readexactly(12)
        writer.write(refusal("Too many security failures"))

    async with fake_server(script) as port:
        with pytest.raises(VncRefused) as caught:
            await _login(port, "pw")
    assert caught.value.reason == "Too many security failures"


@pytest.mark.parametrize(
    ("greeting", "match"),
    [
        (b"HTTP/1.1 400", "not a VNC server"),
        (b"RFB 00x.008\n", "not a VNC server"),
        (b"RFB 002.000\n", "unsupported RFB version 2.0"),
    ],
)
async def test_not_a_vnc_server(greeting: bytes, match: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)

    async with fake_server(script) as port:
        with pytest.raises(RFBError, match=match):
            await _login(port, None)


async def test_a_server_hanging_up_midway_is_an_rfb_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PROTOCOL_38)
        await reader.readexactly(12)
        writer.write(b"\x02\x01")  # says two types, sends one, hangs up
        await writer.drain()
        writer.close()

    async with fake_server(script) as port:
        with pytest.raises(RFBError, match="closed the connection during the handshake"):
            await _login(port, None)


# --- the server side (the gateway towards the browser) ----------------------


async def test_server_handshake_serves_what_client_handshake_reads() -> None:
    """The gateway's two halves meet: its server side, the package's client side."""
    init = ServerInit(1280, 720, PIXEL_FORMAT, b"selfagent")

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server_handshake(reader, writer, init)

    async with fake_server(script) as port:
        login = await _login(port, "unused")
    assert login == _handshake_fields((3, 8), (1,), 1, init)


def test_refusal_is_cut_to_what_clients_accept() -> None:
    data = refusal("x" * 10_000)
    assert data[:5] == b"\x00" + struct.pack(">I", 4096) and len(data) == 5 + 4096


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"\x02\x00" + struct.pack(">H", 1025), "SetEncodings of 1025 encodings exceeds"),
        (b"\x06\x00\x00\x00" + struct.pack(">I", (1 << 20) + 1), "clipboard text of 1048577"),
        (b"\x06\x00\x00\x00" + struct.pack(">i", -(2 << 20)), "clipboard text of 2097152"),
        (b"\xf8\x00\x00\x00\x00\x00\x00\x00\x41", "fence payload of 65 bytes"),
        (b"\xfb\x00\x00\x00\x00\x00\x11\x00", "SetDesktopSize of 17 screens"),
        (b"\xff\x01", "unsupported QEMU client message subtype 1"),
        (b"\x63", "unknown client message type 99"),
    ],
)
def test_message_length_refuses_what_exceeds_the_caps(message: bytes, match: str) -> None:
    with pytest.raises(RFBError, match=match):
        message_length(message)


def test_message_length_of_complete_and_partial_messages() -> None:
    assert message_length(b"") is None
    assert message_length(b"\x05\x00") is None  # pointer: waits for its 6 bytes
    assert message_length(b"\x05\x00\x00\x01\x00\x02\xff") == 6
    assert message_length(b"\x02\x00\x00") is None  # SetEncodings: count not here yet
    assert message_length(b"\x02\x00" + struct.pack(">H", 3)) == 16
    assert message_length(b"\x06\x00\x00\x00" + struct.pack(">i", -10)) == 18


def test_filter_withholds_input_unless_allowed_and_keeps_partial_messages() -> None:
    pointer = struct.pack(">BBHH", 5, 1, 10, 20)
    request = struct.pack(">BBHHHH", 3, 1, 0, 0, 64, 48)
    key = struct.pack(">BBxxI", 4, 1, 0x61)
    assert {4, 5, 6} <= INPUT_TYPES and 3 not in INPUT_TYPES
    messages = ClientMessageFilter()
    stream = pointer + request + key
    assert messages.feed(stream[:9], allow_input=False) == b""  # pointer dropped, request partial
    assert messages.feed(stream[9:], allow_input=False) == request
    assert messages.dropped == 2
    assert messages.feed(stream, allow_input=True) == stream


def _init_bytes(width: int, height: int, name: bytes) -> bytes:
    return ServerInit(width, height, PIXEL_FORMAT, name).encode()


def _handshake_fields(
    version: tuple[int, int], offered: tuple[int, ...], security: int, init: ServerInit
) -> Handshake:
    return Handshake(version, version, offered, security, init)
