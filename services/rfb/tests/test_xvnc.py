"""RFBClient against a real Xvnc + Xfce desktop: VncAuth, a live frame, a pointer event."""

from __future__ import annotations

import asyncio
import time

import pytest

from selfagent.rfb import RFBClient
from tests.harness.desktop import Desktop

pytestmark = pytest.mark.desktop


def _pointer(desktop: Desktop) -> tuple[int, int]:
    fields = dict(p.split(":") for p in desktop.xdotool("getmouselocation").split() if ":" in p)
    return int(fields["x"]), int(fields["y"])


async def test_connects_gets_a_frame_and_moves_the_pointer(desktop: Desktop) -> None:
    client = RFBClient("127.0.0.1", desktop.vnc_port, desktop.password)
    await client.connect(timeout=10)  # Xvnc offers VncAuth alone: the password is checked
    try:
        assert (client.width, client.height) == (desktop.width, desktop.height)
        assert client.name == "selfagent"
        assert len(client.framebuffer) == desktop.width * desktop.height * 4

        def colours() -> set[bytes]:
            pixels = client.framebuffer
            # A prime stride samples rows and columns.
            return {bytes(pixels[i : i + 3]) for i in range(0, len(pixels), 4 * 997)}

        # A real Xfce desktop (wallpaper, panel, icons) is never one flat
        # colour, once the first full update has arrived (on a loaded machine
        # it can come after connect() returns).
        deadline = time.monotonic() + 10
        while len(colours()) <= 20:
            assert time.monotonic() < deadline, colours()
            await asyncio.sleep(0.05)

        target = (321, 123) if _pointer(desktop) != (321, 123) else (322, 124)
        since = client.last_change
        client.pointer(*target)
        await client.flush()
        deadline = time.monotonic() + 5
        while _pointer(desktop) != target:
            assert time.monotonic() < deadline, f"pointer at {_pointer(desktop)}, not {target}"
            await asyncio.sleep(0.05)
        # The server draws the cursor into the framebuffer, so the move arrives
        # back as an update: the copy is live, not a snapshot taken at connect.
        while client.last_change == since:
            assert time.monotonic() < deadline, "no framebuffer update after the move"
            await asyncio.sleep(0.05)
        assert client.connected and client.error is None
    finally:
        await client.close()
