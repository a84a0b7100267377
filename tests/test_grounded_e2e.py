"""Grounded mode end to end: the planner names a target, a UI-TARS-1.5 grounder finds it.

Two scripted models: the planner's LLM says "click the terminal icon in the
dock" without coordinates; the grounding VLM answers in UI-TARS-1.5 syntax, in
pixels of the smart-resized image it actually received. It finds the icon the
honest way: the dock's window comes from the X server, the order of its items
from the panel's own configuration, and the icons' columns from the pixels of
the image the grounder sent. Everything else (nats-server, Xvnc + Xfce, the
actuator, grounder, planner and gateway processes) is real, and the test
passes only if a terminal window really appears on the desktop.
"""

from __future__ import annotations

import base64
import io
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from tests.harness.api import chat, session_events
from tests.harness.fakellm import FakeLLM, tool_call

pytestmark = pytest.mark.desktop

TERMINAL_LAUNCHER = "xfce4-terminal-emulator.desktop"
TARGET = "the terminal icon in the dock"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


@pytest.fixture(scope="module")
def planner_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vlm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def grounded_stack(planner_llm: FakeLLM, vlm: FakeLLM) -> Iterator[LocalStack]:
    local = LocalStack(
        gateway_port=free_port(),
        token="test-token-" + "g" * 16,
        extra_env={
            "LLM_API_BASE_URL": planner_llm.base_url,
            "LLM_MODEL": "fake-planner",
            "LLM_API_KEY": "sk-test",
            "PLANNER_MODE": "grounded",
            "PLANNER_LLM_TIMEOUT": "10",
            "PLANNER_LLM_MAX_ATTEMPTS": "2",
            "GROUNDER_API_BASE_URL": vlm.base_url,
            "GROUNDER_MODEL": "UI-TARS-1.5-7B",
            "GROUNDER_FAMILY": "ui-tars-1.5",
            "GROUNDER_CANARY": "false",
        },
    )
    local.start()
    yield local
    local.stop(remove=True)


# --- the desktop, measured ----------------------------------------------------


def xdotool(stack: LocalStack, *args: str) -> str:
    env = {"DISPLAY": f":{stack.display_num}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=20)
    return done.stdout


def dock_window(stack: LocalStack, timeout: float = 30.0) -> Box:
    """The Xfce panel window that sits on the bottom edge of the screen."""
    screen_h = stack.screen[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for wid in xdotool(stack, "search", "--onlyvisible", "--name", "xfce4-panel").split():
            shell = xdotool(stack, "getwindowgeometry", "--shell", wid)
            geometry = dict(line.split("=", 1) for line in shell.split() if "=" in line)
            box = Box(
                int(geometry["X"]),
                int(geometry["Y"]),
                int(geometry["WIDTH"]),
                int(geometry["HEIGHT"]),
            )
            if box.width > 50 and box.height > 20 and box.y + box.height >= screen_h - 2:
                return box
        time.sleep(0.3)
    raise AssertionError("no dock panel at the bottom of the screen")


def dock_items(stack: LocalStack) -> list[str]:
    """The dock's plugins in order, from the panel configuration the sandbox uses.

    A launcher is named by its first .desktop item, anything else by its type.
    """
    assert stack.sandbox_home is not None
    path = (
        stack.sandbox_home / ".config" / "xfce4" / "xfconf" / "xfce-perchannel-xml"
    ) / "xfce4-panel.xml"
    root = ET.parse(path).getroot()
    plugins: dict[int, str] = {}
    for prop in root.iter("property"):
        name = prop.get("name", "")
        if name.startswith("plugin-") and name[7:].isdigit() and prop.get("value"):
            kind = prop.get("value", "")
            items = [v.get("value", "") for v in prop.iter("value")]
            number = int(name[7:])
            plugins[number] = (
                launcher_source(stack, number, items[0]) if kind == "launcher" and items else kind
            )
    panels = [
        [plugins.get(int(v.get("value", "-1")), "?") for v in ids.iter("value")]
        for ids in root.iter("property")
        if ids.get("name") == "plugin-ids"
    ]
    docks = [panel for panel in panels if TERMINAL_LAUNCHER in panel]
    assert len(docks) == 1, panels
    return docks[0]


def launcher_source(stack: LocalStack, plugin: int, item: str) -> str:
    """The .desktop file a launcher item stands for.

    On first start the panel copies each launcher's item into its own config
    directory under a generated name; the copy records where it came from.
    """
    assert stack.sandbox_home is not None
    copy = stack.sandbox_home / ".config" / "xfce4" / "panel" / f"launcher-{plugin}" / item
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
    counts = Counter(map(tuple, region.reshape(-1, 3)))
    background = np.array(counts.most_common(1)[0][0])
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


def received_image(body: dict[str, Any]) -> Image.Image:
    for message in body["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    raise AssertionError("the grounder sent no image")


def request_text(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part.get("text", "") for part in content)
    return "\n".join(texts)


class TarsStandIn:
    """Answers like UI-TARS-1.5: the terminal launcher's centre, in the received image's pixels."""

    def __init__(self, screen: tuple[int, int], dock: Box, items: list[str]) -> None:
        self.screen = screen
        self.dock = dock
        self.items = items
        self.answers: list[tuple[int, int]] = []
        self.image_sizes: list[tuple[int, int]] = []
        self.launcher_columns: list[tuple[int, int]] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if "terminal" not in request_text(body).lower():
            return {"content": "Action: click(point='<point>-1 -1</point>')"}
        image = received_image(body)
        w, h = image.size
        self.image_sizes.append((w, h))
        sx, sy = w / self.screen[0], h / self.screen[1]
        dock = Box(
            round(self.dock.x * sx),
            round(self.dock.y * sy),
            round(self.dock.width * sx),
            round(self.dock.height * sy),
        )
        runs = icon_columns(np.asarray(image), dock)
        # One run of inked columns per dock item (icons and separators alike);
        # anything else means the dock is not what we measured.
        if len(runs) != len(self.items):
            return {"content": "Action: click(point='<point>-1 -1</point>')"}
        left, right = runs[self.items.index(TERMINAL_LAUNCHER)]
        self.launcher_columns.append((left, right))
        point = ((left + right) // 2, dock.y + dock.height // 2)
        self.answers.append(point)
        return {
            "content": "Thought: the terminal launcher is in the dock.\n"
            f"Action: click(point='<point>{point[0]} {point[1]}</point>')"
        }


# --- gateway helpers ----------------------------------------------------------


def terminal_windows(stack: LocalStack) -> set[str]:
    return set(xdotool(stack, "search", "--onlyvisible", "--class", "xfce4-terminal").split())


# --- the test -----------------------------------------------------------------


def test_click_on_described_target_opens_the_terminal(
    grounded_stack: LocalStack, planner_llm: FakeLLM, vlm: FakeLLM
) -> None:
    stack = grounded_stack
    dock = dock_window(stack)
    items = dock_items(stack)
    tars = TarsStandIn(stack.screen, dock, items)
    vlm.reset(default=tars)
    planner_llm.reset()
    planner_llm.push(
        tool_call("computer", {"action": "click", "target": TARGET}),
        tool_call("computer", {"action": "wait", "seconds": 1.0}),
        tool_call("computer", {"action": "done", "message": "A terminal is open."}),
    )
    assert not terminal_windows(stack), "a terminal was open before the task"

    reply = chat(stack, "open a terminal from the dock")

    assert reply["status"] == "succeeded", reply
    # The window maps a moment after the launcher is pressed.
    deadline = time.monotonic() + 20
    while not terminal_windows(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert terminal_windows(stack), "no terminal window appeared on the desktop"

    # The VLM was asked about the planner's words and saw a smart-resized image
    # (UI-TARS-1.5 works on a 28-pixel grid), not the raw 1280x720 screen.
    assert len(vlm.requests) == 1 and tars.answers, "the VLM did not find the launcher"
    assert TARGET in request_text(vlm.requests[0])
    (w, h) = tars.image_sizes[0]
    assert w % 28 == 0 and h % 28 == 0 and (w, h) != stack.screen

    # The planner's click named no coordinates; the grounded event carries the
    # screen position, which lies on the terminal launcher in screen pixels.
    planner_calls = [r for r in planner_llm.requests if r.get("messages")]
    assert len(planner_calls) == 3
    events = session_events(stack, reply["session_id"])
    planned = [e for e in events if e["kind"] == "step.planned"]
    assert planned[0]["action"]["action"] == "click"
    assert planned[0]["action"].get("x") is None and planned[0]["action"]["target"] == TARGET
    grounded = [e for e in events if e["kind"] == "step.grounded"]
    assert len(grounded) == 1, events
    event = grounded[0]
    assert event["target"] == TARGET and event["method"].startswith("ui-tars-1.5")
    # In screen pixels, the point lies on the launcher's columns as measured
    # in the image the VLM received.
    left, right = (round(c * stack.screen[0] / w) for c in tars.launcher_columns[0])
    assert left <= event["x"] <= right, (event, left, right)
    assert dock.y <= event["y"] < dock.y + dock.height, (event, dock)
    mx, my = tars.answers[0]
    assert abs(event["x"] - mx * stack.screen[0] / w) <= 1.5
    assert abs(event["y"] - my * stack.screen[1] / h) <= 1.5

    executed = [e for e in events if e["kind"] == "step.executed"]
    click = executed[0]
    assert click["ok"] and click["action"]["action"] == "click"
    assert (click["action"]["x"], click["action"]["y"]) == (event["x"], event["y"])
    finished = [e for e in events if e["kind"] == "task.finished"]
    assert len(finished) == 1 and finished[0]["reply"] == "A terminal is open."
