"""OCR grounding on the real Xfce desktop, screenshot taken over VNC.

The true centre of the word comes from the pixels, not from Tesseract: the
message is drawn in a colour nothing else on the desktop uses, and the
bounding box of those pixels is the word.
"""

from __future__ import annotations

import base64
import io
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from vncdotool import api

from selfagent.grounder.config import Settings
from selfagent.grounder.grounder import Grounder
from selfagent.schemas import GroundRequest, Screenshot
from tests.harness.desktop import Desktop, start_desktop

pytestmark = [pytest.mark.desktop, pytest.mark.asyncio(loop_scope="session")]

WORD = "QUOKKAZEPHYR"
INK = "#c00000"


@pytest.fixture(scope="module")
def desktop() -> Iterator[Desktop]:
    desk = start_desktop()
    try:
        yield desk
    finally:
        desk.stop()


def capture(desk: Desktop) -> Image.Image:
    client = api.connect(f"127.0.0.1::{desk.vnc_port}", password=desk.password, timeout=10)
    try:
        client.refreshScreen()
        return client.screen.copy().convert("RGB")
    finally:
        client.disconnect()


def ink_centre(image: Image.Image) -> tuple[float, float]:
    pixels = np.asarray(image).astype(int)
    red = (pixels[..., 0] > 140) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    ys, xs = np.nonzero(red)
    assert xs.size > 50, "the message text is not on the screen"
    return (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2


def settled_capture(desk: Desktop, timeout: float = 15.0) -> Image.Image:
    """A screenshot once two in a row agree: on a loaded machine the desktop
    may still be drawing (the panel, the message's font) when first captured."""
    deadline = time.monotonic() + timeout
    previous = capture(desk)
    while True:
        time.sleep(0.5)
        current = capture(desk)
        if np.array_equal(np.asarray(previous), np.asarray(current)):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"the desktop kept changing for {timeout} s")
        previous = current


@pytest.fixture(scope="module")
def message_window(desktop: Desktop) -> Iterator[Desktop]:
    proc = subprocess.Popen(
        [
            "xmessage", "-bg", "white",
            "-xrm", f"*message*foreground: {INK}",
            "-xrm", "*message.scrollVertical: never",
            "-xrm", "*message.scrollHorizontal: never",
            "-geometry", "+520+330", WORD,
        ],
        env=desktop.env(),
    )  # fmt: skip
    try:
        desktop.wait_for_window("xmessage")
        yield desktop
    finally:
        proc.terminate()
        proc.wait(10)
        api.shutdown()


@pytest.fixture
def message_on_screen(message_window: Desktop) -> Image.Image:
    # Taken for each test, so a retried test does not reuse a bad screenshot.
    return settled_capture(message_window)


def request_for(image: Image.Image, description: str) -> GroundRequest:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return GroundRequest(
        description=description,
        screenshot=Screenshot(
            format="png",
            width=image.width,
            height=image.height,
            data_b64=base64.b64encode(buffer.getvalue()).decode(),
        ),
        screen_width=1280,
        screen_height=720,
    )


async def test_ocr_finds_the_word_within_10px(message_on_screen: Image.Image) -> None:
    true_x, true_y = ink_centre(message_on_screen)
    grounder = Grounder.from_settings(Settings(family="ocr", ocr_timeout=60))
    result = await grounder.ground(request_for(message_on_screen, f'the text "{WORD}"'))
    assert result.ok and result.found, result
    assert result.method == "ocr" and result.confidence is not None
    assert abs(result.x - true_x) <= 10 and abs(result.y - true_y) <= 10, (  # type: ignore[operator]
        (result.x, result.y),
        (true_x, true_y),
    )


async def test_ocr_on_a_half_size_screenshot_answers_in_screen_pixels(
    message_on_screen: Image.Image,
) -> None:
    small = message_on_screen.resize((960, 540), Image.Resampling.LANCZOS)
    grounder = Grounder.from_settings(Settings(family="ocr", ocr_timeout=60))
    result = await grounder.ground(request_for(small, "Applications menu"))
    assert result.found and result.x is not None and result.y is not None
    # The panel's "Applications" button is at the top left of the real screen.
    assert result.x < 200 and result.y < 30
    missing = await grounder.ground(request_for(small, 'the "Xylophonequest" button'))
    assert missing.ok and not missing.found and missing.x is None
