"""Upper bounds on every length a VNC peer announces before sending the data.

RFB prefixes variable data with its length (u16 or u32), and a naive reader
allocates whatever the peer announces. The sandbox is untrusted, and so is a
browser, so each length is checked here before a byte of it is read. The
limits are far above what a real server or noVNC sends and far below what
would hurt the process.
"""

from __future__ import annotations

from selfagent.errors import RFBError

# ServerInit desktop name; Xvnc sends a few dozen bytes.
MAX_NAME = 4096
# The text of a refusal or of an authentication failure.
MAX_REASON = 4096
# Clipboard text, ServerCutText and ClientCutText alike.
MAX_CUT_TEXT = 1 << 20
# Framebuffer size. Each side bounds one dimension; the area bounds the buffer
# a client must hold (8K UHD at 4 bytes a pixel is ~127 MiB).
MAX_SIDE = 8192
MAX_PIXELS = 7680 * 4320
# Rectangles in one FramebufferUpdate. TigerVNC reports damage in 64x64 tiles,
# so even an 8192x8192 screen needs at most this many; the u16 field allows 65535.
MAX_RECTANGLES = 16384
# Client messages the gateway parses on behalf of the sandbox.
MAX_ENCODINGS = 1024
MAX_FENCE_PAYLOAD = 64
MAX_SCREENS = 16


def check(what: str, size: int, limit: int, unit: str = "bytes") -> int:
    """Return ``size``, or raise if it is over ``limit``; says what and by how much."""
    if size > limit:
        raise RFBError(f"{what} of {size} {unit} exceeds the limit of {limit}")
    return size


def check_screen(width: int, height: int) -> tuple[int, int]:
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise RFBError(
            f"desktop size {width}x{height} exceeds the limit "
            f"({MAX_SIDE} a side, {MAX_PIXELS} pixels)"
        )
    return width, height
