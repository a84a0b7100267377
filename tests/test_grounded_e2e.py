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

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from tests.harness import dock as dock_module
from tests.harness.api import chat, session_events
from tests.harness.dock import Box, find_launcher, received_image, request_text
from tests.harness.fakellm import FakeLLM, tool_call

pytestmark = pytest.mark.desktop

TARGET = "the terminal icon in the dock"


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
        desktops="fixed",
        gateway_port=free_port(),
        token=secrets.token_urlsafe(24),
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
            "PLANNER_CANARY": "false",
        },
    )
    local.start()
    yield local
    local.stop(remove=True)


# --- the desktop, measured (tests/harness/dock.py) -----------------------------


def dock_window(stack: LocalStack) -> Box:
    return dock_module.dock_window(stack.display_num, stack.screen[1])


def dock_items(stack: LocalStack) -> list[str]:
    assert stack.sandbox_home is not None
    return dock_module.dock_items(stack.sandbox_home)


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
        self.image_sizes.append(image.size)
        launcher = find_launcher(image, self.screen, self.dock, self.items)
        # Anything but one icon per launcher in the dock means the dock is not
        # what we measured.
        if launcher is None:
            return {"content": "Action: click(point='<point>-1 -1</point>')"}
        self.launcher_columns.append(launcher.columns)
        point = launcher.centre
        self.answers.append(point)
        return {
            "content": "Thought: the terminal launcher is in the dock.\n"
            f"Action: click(point='<point>{point[0]} {point[1]}</point>')"
        }


# --- gateway helpers ----------------------------------------------------------


def terminal_windows(stack: LocalStack) -> set[str]:
    return dock_module.terminal_windows(stack.display_num)


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
    dock_module.wait_for_launcher(stack.display_num, stack.screen, dock, items)

    reply = chat(stack, "open a terminal from the dock")

    assert reply["status"] == "succeeded", reply
    # The grounding first: when it failed, no terminal could appear.
    assert len(vlm.requests) == 1 and tars.answers, "the VLM did not find the launcher"
    # The window maps a moment after the launcher is pressed.
    deadline = time.monotonic() + 20
    while not terminal_windows(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert terminal_windows(stack), "no terminal window appeared on the desktop"

    # The VLM was asked about the planner's words and saw a smart-resized image
    # (UI-TARS-1.5 works on a 28-pixel grid), not the raw 1280x720 screen.
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
