"""Finding the dock's terminal launcher on a real Xfce desktop, the honest way.

The dock's window comes from the X server, the order of its items from the
panel's own configuration, and the icons' columns from the pixels of the
image a model actually received. A scripted model uses this to answer like a
real one would: with the launcher's centre, in the coordinates of its image.
"""

from __future__ import annotations

import base64
import io
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageGrab

TERMINAL_LAUNCHER = "xfce4-terminal-emulator.desktop"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


def xdotool(display_num: int, *args: str) -> str:
    env = {"DISPLAY": f":{display_num}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=20)
    return done.stdout


def dock_window(display_num: int, screen_h: int, timeout: float = 30.0) -> Box:
    """The Xfce panel window that sits on the bottom edge of the screen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for wid in xdotool(display_num, "search", "--onlyvisible", "--name", "xfce4-panel").split():
            shell = xdotool(display_num, "getwindowgeometry", "--shell", wid)
            geometry = dict(line.split("=", 1) for line in shell.split() if "=" in line)
            box = Box(
                int(geometry["X"]),
                int(geometry["Y"]),
                int(geometry["WIDTH"]),
                int(geometry["HEIGHT"]),
            )
            # On the bottom edge and not slid away (the dock hides under windows).
            bottom = box.y + box.height
            if box.width > 50 and box.height > 20 and screen_h - 2 <= bottom <= screen_h + 2:
                return box
        time.sleep(0.3)
    raise AssertionError("no dock panel at the bottom of the screen")


def wait_for_launcher(
    display_num: int, screen: tuple[int, int], dock: Box, items: list[str], timeout: float = 30.0
) -> Launcher:
    """The terminal launcher once the dock shows every item's icon.

    On a loaded machine the panel maps its window before its icons are
    drawn; a model shown that half-drawn dock could not find the launcher.
    """
    deadline = time.monotonic() + timeout
    while True:
        shot = ImageGrab.grab(xdisplay=f":{display_num}").convert("RGB")
        launcher = find_launcher(shot, screen, dock, items)
        if launcher is not None:
            return launcher
        if time.monotonic() > deadline:
            raise AssertionError(f"the dock did not show its {len(items)} items in {timeout} s")
        time.sleep(0.3)


def dock_items(home: Path) -> list[str]:
    """The dock's plugins in order, from the panel configuration the sandbox uses.

    A launcher is named by its first .desktop item, anything else by its type.
    """
    path = (home / ".config" / "xfce4" / "xfconf" / "xfce-perchannel-xml") / "xfce4-panel.xml"
    root = ET.parse(path).getroot()
    plugins: dict[int, str] = {}
    for prop in root.iter("property"):
        name = prop.get("name", "")
        if name.startswith("plugin-") and name[7:].isdigit() and prop.get("value"):
            kind = prop.get("value", "")
            items = [v.get("value", "") for v in prop.iter("value")]
            number = int(name[7:])
            plugins[number] = (
                launcher_source(home, number, items[0]) if kind == "launcher" and items else kind
            )
    panels = [
        [plugins.get(int(v.get("value", "-1")), "?") for v in ids.iter("value")]
        for ids in root.iter("property")
        if ids.get("name") == "plugin-ids"
    ]
    docks = [panel for panel in panels if TERMINAL_LAUNCHER in panel]
    assert len(docks) == 1, panels
    return docks[0]


def launcher_source(home: Path, plugin: int, item: str) -> str:
    """The .desktop file a launcher item stands for.

    On first start the panel copies each launcher's item into its own config
    directory under a generated name; the copy records where it came from.
    """
    copy = home / ".config" / "xfce4" / "panel" / f"launcher-{plugin}" / item
    if copy.exists():
        for line in copy.read_text(errors="replace").splitlines():
            if line.startswith("X-XFCE-Source="):
                return line.rsplit("/", 1)[-1]
    return item


def icon_columns(pixels: np.ndarray[Any, Any], box: Box) -> list[tuple[int, int]]:
    """Runs of columns inside ``box`` that differ from the dock's background."""
    inset = 3
    region = pixels[
        box.y + inset : box.y + box.height - inset, box.x + inset : box.x + box.width - inset
    ].astype(int)
    # The commonest colour, counted in coarse bins: JPEG noise spreads a flat
    # background over many nearby values, while a flat icon may stay exact.
    pixels_flat = region.reshape(-1, 3)
    bins = pixels_flat // 32
    counts = Counter(map(tuple, bins))
    winner = np.array(counts.most_common(1)[0][0])
    background = pixels_flat[(bins == winner).all(axis=1)].mean(axis=0)
    inked = (np.abs(region - background).sum(axis=2) > 60).sum(axis=0) >= 3
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for i, on in enumerate([*inked.tolist(), False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((box.x + inset + start, box.x + inset + i))
            start = None
    return runs


def images_received(body: dict[str, Any]) -> list[Image.Image]:
    """Every image of a chat-completions request, in order."""
    found: list[Image.Image] = []
    for message in body["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    found.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return found


def received_image(body: dict[str, Any]) -> Image.Image:
    images = images_received(body)
    if not images:
        raise AssertionError("the request held no image")
    return images[0]


def request_text(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part.get("text", "") for part in content)
    return "\n".join(texts)


def terminal_windows(display_num: int) -> set[str]:
    return set(xdotool(display_num, "search", "--onlyvisible", "--class", "xfce4-terminal").split())


@dataclass(frozen=True)
class Launcher:
    """The terminal launcher as measured in one image: its columns and its centre."""

    columns: tuple[int, int]
    centre: tuple[int, int]


def find_launcher(
    image: Image.Image, screen: tuple[int, int], dock: Box, items: list[str]
) -> Launcher | None:
    """The terminal launcher in ``image`` (any size), or None if the dock is not as measured.

    Icons are the wide runs of inked columns, one per item that is not a
    separator, in order; thin runs are separators, or the frame the panel
    draws around a launcher it considers active, and are not counted.
    """
    w, h = image.size
    sx, sy = w / screen[0], h / screen[1]
    scaled = Box(
        round(dock.x * sx), round(dock.y * sy), round(dock.width * sx), round(dock.height * sy)
    )
    runs = icon_columns(np.asarray(image), scaled)
    icons = [run for run in runs if run[1] - run[0] >= scaled.height * 0.4]
    named = [item for item in items if item != "separator"]
    if len(icons) != len(named):
        return None
    left, right = icons[named.index(TERMINAL_LAUNCHER)]
    return Launcher((left, right), ((left + right) // 2, scaled.y + scaled.height // 2))
