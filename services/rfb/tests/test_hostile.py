"""A sandbox's VNC server is untrusted: whatever length it announces, the client refuses promptly.

Each case sends one absurd length and then keeps the connection open without
sending the data. A client that believed it would either wait for bytes that
never come (caught by the time bound) or allocate for them up front (caught by
the allocation bound, measured with tracemalloc: an RSS reading would miss a
zero-filled buffer the kernel has not backed yet, and the process's peak RSS
is whatever an earlier test left).
"""

from __future__ import annotations

import asyncio
import struct
import time
import tracemalloc

import pytest

from selfagent.errors import RFBError
from selfagent.rfb import RFBClient

from .fakeserver import Script, fake_server, first_frame_request, greet, rect_header, server_init

HUGE = 0xFFFFFFFF
# Well under what any of the announced sizes would need (the smallest, the
# 1 MiB clipboard cap, is not the point; 4 GiB names and 16 GiB screens are).
MAX_ALLOCATED = 8 * 1024 * 1024
PROMPT = 1.0


async def _refused(script: Script, match: str) -> RFBError:
    """Connect to ``script``; assert a prompt RFBError matching ``match`` and no big allocation."""
    tracemalloc.start()
    try:
        async with fake_server(script) as port:
            client = RFBClient("127.0.0.1", port, "secret")
            tracemalloc.reset_peak()
            started = time.monotonic()
            with pytest.raises(RFBError, match=match) as caught:
                # The client's own timeout would also raise RFBError, later
                # and with another message: the bound and the match catch it.
                await client.connect(timeout=5)
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
            await client.close()
    finally:
        tracemalloc.stop()
    assert elapsed < PROMPT, f"took {elapsed:.2f}s to refuse"
    assert peak < MAX_ALLOCATED, f"allocated {peak / 1e6:.1f} MB while refusing"
    return caught.value


async def _after_first_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
) -> None:
    await greet(reader, writer)
    await first_frame_request(reader)
    writer.write(message)


async def test_huge_server_name_length() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, init=server_init(name=b"x", name_length=HUGE))

    await _refused(script, f"desktop name of {HUGE} bytes exceeds the limit of 4096")


@pytest.mark.parametrize(("width", "height"), [(65535, 65535), (8192, 8192), (1, 9000)])
async def test_absurd_desktop_size_in_server_init(width: int, height: int) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, init=server_init(width, height))

    await _refused(script, f"desktop size {width}x{height} exceeds the limit")


async def test_absurd_desktop_size_in_an_update() -> None:
    resize = b"\x00\x00\x00\x01" + rect_header(0, 0, 65535, 65535, -223)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, resize)

    await _refused(script, "desktop size 65535x65535 exceeds the limit")


async def test_huge_cut_text_length() -> None:
    cut_text = b"\x03\x00\x00\x00" + struct.pack(">I", HUGE) + b"clip"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, cut_text)

    await _refused(script, f"clipboard text of {HUGE} bytes exceeds the limit of 1048576")


async def test_huge_rectangle_count() -> None:
    update = b"\x00\x00" + struct.pack(">H", 65535) + rect_header(0, 0, 1, 1, 0) + b"\0" * 4

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, update)

    await _refused(script, "framebuffer update of 65535 rectangles exceeds the limit of 16384")


async def test_rectangle_outside_the_framebuffer() -> None:
    # 60000x60000 Raw pixels would be 14 GB; the screen is 64x48.
    update = b"\x00\x00\x00\x01" + rect_header(0, 0, 60000, 60000, 0)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, update)

    await _refused(script, "rectangle 60000x60000 at 0,0 lies outside the 64x48 framebuffer")


async def test_copyrect_from_outside_the_framebuffer() -> None:
    update = b"\x00\x00\x00\x01" + rect_header(0, 0, 8, 8, 1) + struct.pack(">HH", 60, 0)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, update)

    await _refused(script, "CopyRect source 8x8 at 60,0 is off screen")


async def test_huge_refusal_reason() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x00" + struct.pack(">I", HUGE) + b"go away")

    await _refused(script, f"refusal reason of {HUGE} bytes exceeds the limit of 4096")


async def test_huge_authentication_failure_reason() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x01\x02")
        await reader.readexactly(1)
        writer.write(b"\x00" * 16)
        await reader.readexactly(16)
        writer.write(struct.pack(">II", 1, HUGE))

    await _refused(script, f"authentication failure reason of {HUGE} bytes exceeds")


async def test_a_live_connection_drops_on_a_huge_cut_text_and_says_why() -> None:
    """Not only during connect: the running reader stops with the same error."""
    frame = b"\x00\x00\x00\x01" + rect_header(0, 0, 64, 48, 0) + bytes(range(256)) * 48
    sent = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, frame)
        await writer.drain()
        await sent.wait()
        writer.write(b"\x03\x00\x00\x00" + struct.pack(">I", HUGE))

    async with fake_server(script) as port:
        client = RFBClient("127.0.0.1", port, None)
        await client.connect(timeout=5)
        try:
            assert client.connected and (client.width, client.height) == (64, 48)
            assert client.framebuffer == bytes(range(256)) * 48
            sent.set()
            await asyncio.wait_for(client.closed.wait(), PROMPT)
            assert isinstance(client.error, RFBError)
            assert f"clipboard text of {HUGE} bytes" in str(client.error)
            with pytest.raises(RFBError, match="connection is down"):
                client.pointer(1, 1)
        finally:
            await client.close()


async def test_a_colour_map_message_is_skipped_and_the_link_stays_up() -> None:
    """SetColourMapEntries (padding, first colour, count) is read whole and ignored."""
    frame = b"\x00\x00\x00\x01" + rect_header(0, 0, 64, 48, 0) + bytes(range(256)) * 48
    colours = b"\x01\x00" + struct.pack(">HH", 7, 2) + bytes(12)
    sent = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_first_request(reader, writer, colours + b"\x02" + frame)
        await writer.drain()
        sent.set()
        await asyncio.sleep(5)

    async with fake_server(script) as port:
        client = RFBClient("127.0.0.1", port, None)
        await client.connect(timeout=5)
        try:
            await asyncio.wait_for(sent.wait(), PROMPT)
            # The frame came after the colour map and a bell: once it is in,
            # the reader has read past both.
            deadline = time.monotonic() + PROMPT
            while client.framebuffer != bytes(range(256)) * 48:
                assert client.connected, client.error
                assert time.monotonic() < deadline, "the frame after the colour map never arrived"
                await asyncio.sleep(0.01)
            assert client.connected, client.error
        finally:
            await client.close()
