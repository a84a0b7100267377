"""Native computer-use models as the whole agent, on the real desktop.

For each planner family a scripted VLM answers in that family's own syntax:
it finds the dock's terminal launcher in the screenshot it actually received
(the dock from the X server, its items from the panel configuration, the
icon columns from the received pixels), answers in the family's coordinate
space (pixels of the smart-resized image, or thousandths), and the terminal
must really open. Once at 1280x720 and once at 1920x1080; the families share
one desktop per resolution.

Then ``call_user()``: the task waits in ``needs_user`` with the model's
question, an ``answer`` resumes it with the reply in the model's context, and
a stop while waiting ends it cleanly.

Real parts: nats-server, Xvnc + Xfce, the actuator (in-process, over NATS),
the planner service. Only the model is scripted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from selfagent.bus.natsd import EmbeddedNats
from selfagent.grounder.resize import smart_resize
from selfagent.planner.config import Settings
from selfagent.planner.families import get_family
from selfagent.planner.service import PlannerService
from selfagent.planner.service import build as build_planner
from selfagent.schemas import TaskSubmitted
from tests.harness import dock
from tests.harness.actuator import running_actuator
from tests.harness.desktop import Desktop, start_desktop
from tests.harness.fakellm import FakeLLM
from tests.harness.tasks import RunningTask, session_state

pytestmark = [pytest.mark.desktop, pytest.mark.asyncio(loop_scope="session")]

SANDBOX = "families"
TASK_BOUND = 90.0
NATIVE = ("uitars", "uitars-1.0", "qwen2.5", "qwen3", "opencua", "seed")


# --- the real parts, one desktop per resolution -----------------------------------


@pytest.fixture(scope="module")
def nats_server() -> Iterator[EmbeddedNats]:
    server = EmbeddedNats().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module", params=[(1280, 720), (1920, 1080)], ids=["720p", "1080p"])
def desktop(request: pytest.FixtureRequest) -> Iterator[Desktop]:
    width, height = request.param
    d = start_desktop(width, height)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def planner(
    nats_server: EmbeddedNats, desktop: Desktop, llm: FakeLLM
) -> AsyncIterator[PlannerService]:
    async with running_actuator(nats_server.url, desktop, SANDBOX):
        service = build_planner(
            Settings(
                nats_url=nats_server.url,
                llm_api_base_url=llm.base_url,
                llm_model="native-model",
                llm_timeout=5.0,
                llm_max_attempts=2,
                observe_timeout=10.0,
                act_timeout=20.0,
                max_wall_seconds=120.0,
                canary=False,
            )
        )
        await service.start()
        yield service
        await service.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def bus(nats_server: EmbeddedNats, planner: PlannerService) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1)
    yield client
    await client.close()


@pytest.fixture
def as_family(planner: PlannerService, llm: FakeLLM) -> Iterator[Callable[[str], None]]:
    original = planner.settings

    def use(name: str) -> None:
        planner.settings = original.model_copy(update={"family": name})

    llm.reset()
    yield use
    planner.settings = original
    for control in list(planner.controls.values()):
        control.apply("stop")


def clear_the_dock(desktop: Desktop) -> None:
    """Minimise the terminals earlier families opened, and take the pointer off the dock.

    The dock hides under an overlapping window, and a hovered launcher looks
    different to a model. The windows are not closed: restarting xfce4-terminal
    between tests races its session-bus registration ("Failed to execute
    default Terminal Emulator"), while a running one opens new windows at once.
    """
    display = desktop.display_num
    for window in dock.terminal_windows(display):
        dock.xdotool(display, "windowminimize", "--sync", window)
    dock.xdotool(display, "mousemove", str(desktop.width // 2), "100")
    time.sleep(0.5)
    assert not dock.terminal_windows(display), "a terminal is still in the way"


# --- driving a task --------------------------------------------------------------------


def running_task(bus: NatsClient, prompt: str) -> RunningTask:
    return RunningTask(bus, TaskSubmitted(prompt=prompt, sandbox_id=SANDBOX), bound=TASK_BOUND)


# --- a model that answers natively ---------------------------------------------------------


def native_click(name: str, x: int, y: int) -> str:
    """A click in the family's own syntax."""
    if name in ("uitars", "uitars-1.0"):
        return (
            "Thought: The terminal launcher is in the dock at the bottom; I click it.\n"
            f"Action: click(start_box='<|box_start|>({x},{y})<|box_end|>')"
        )
    if name == "seed":
        return (
            "Thought: The terminal launcher is in the dock.\n"
            f"Action: click(point='<point>{x} {y}</point>')"
        )
    if name in ("qwen2.5", "qwen3"):
        call = {"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [x, y]}}
        return (
            "Thought: The terminal launcher is in the dock.\nAction: Click the terminal icon.\n"
            f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        )
    assert name == "opencua"
    return (
        "## Thought:\nThe terminal launcher is in the dock.\n\n## Action:\nClick the terminal "
        f"icon in the dock.\n\n## Code:\n```python\npyautogui.click(x={x}, y={y})\n```"
    )


def native_done(name: str) -> str:
    if name in ("uitars", "uitars-1.0", "seed"):
        return (
            "Thought: A terminal window is open.\nAction: finished(content='A terminal is open.')"
        )
    if name in ("qwen2.5", "qwen3"):
        call = {"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}
        return f"A terminal is open.\n<tool_call>\n{json.dumps(call)}\n</tool_call>"
    return (
        "## Thought:\nThe terminal is open.\n\n## Action:\nFinish.\n\n## Code:\n```code\n"
        "computer.terminate(status='success', answer='A terminal is open.')\n```"
    )


class NativeStandIn:
    """Answers like the family's model: the launcher's centre, in the family's coordinates."""

    def __init__(self, name: str, screen: tuple[int, int], box: dock.Box, items: list[str]) -> None:
        self.name = name
        self.space = get_family(name).space
        self.screen, self.box, self.items = screen, box, items
        self.image_sizes: list[tuple[int, int]] = []
        self.launchers: list[dock.Launcher] = []
        self.errors: list[str] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._answer(body)
        except Exception as exc:
            # A stand-in that breaks must fail the test, not look like a dropped connection.
            self.errors.append(repr(exc))
            raise

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        image = dock.images_received(body)[-1]
        self.image_sizes.append(image.size)
        launcher = dock.find_launcher(image, self.screen, self.box, self.items)
        if launcher is None:
            self.errors.append(f"the dock in the {image.size} image is not as measured")
            return {"content": "I cannot see the dock."}
        self.launchers.append(launcher)
        x, y = launcher.centre
        if self.space == "rel1000":
            w, h = image.size
            x, y = round(x * 1000 / w), round(y * 1000 / h)
        return {"content": native_click(self.name, x, y)}


@pytest.mark.parametrize("name", NATIVE)
async def test_native_reply_clicks_the_dock_terminal(
    name: str,
    desktop: Desktop,
    planner: PlannerService,
    llm: FakeLLM,
    bus: NatsClient,
    as_family: Callable[[str], None],
) -> None:
    screen = (desktop.width, desktop.height)
    clear_the_dock(desktop)
    box = dock.dock_window(desktop.display_num, desktop.height)
    stand_in = NativeStandIn(name, screen, box, dock.dock_items(desktop.home))
    as_family(name)
    llm.push(stand_in, {"content": native_done(name)})

    running = await running_task(bus, "open a terminal from the dock").start()
    finished = (await running.outcome()).finished

    assert finished["status"] == "succeeded", (finished, running.events)
    assert finished["reply"] == "A terminal is open."
    deadline = time.monotonic() + 20
    while not dock.terminal_windows(desktop.display_num) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dock.terminal_windows(desktop.display_num), (
        "no terminal window appeared",
        stand_in.errors,
        len(llm.requests),
        [e.get("text") for e in running.events if e["kind"] == "message"],
        stand_in.launchers,
        box,
    )

    # The model saw an image on its own grid: the smart-resized screen for the
    # absolute-pixel families, the usual downscaled view for the 0-1000 ones.
    family = get_family(name)
    (w, h) = stand_in.image_sizes[0]
    if family.resize:
        rh, rw = smart_resize(screen[1], screen[0], 28, family.min_pixels, family.max_pixels)
        assert (w, h) == (rw, rh) and w % 28 == 0 and h % 28 == 0
    else:
        assert w <= 1280 and abs(w / h - screen[0] / screen[1]) < 0.01

    # The click reached the screen on the launcher, mapped from the model's space.
    clicks = [e for e in running.of("step.executed") if e["action"]["action"] == "click"]
    assert len(clicks) == 1 and clicks[0]["ok"], running.events
    left, right = (round(c * screen[0] / w) for c in stand_in.launchers[0].columns)
    x, y = clicks[0]["action"]["x"], clicks[0]["action"]["y"]
    assert left <= x <= right, (x, left, right)
    assert box.y <= y < box.y + box.height, (y, box)
    # What the model planned was in its own space; the thought came with it.
    planned = running.of("step.planned")[0]
    assert planned["thought"], planned
    if family.space == "rel1000":
        assert planned["action"]["x"] <= 1000 and planned["action"]["y"] <= 1000
    # The family's sampling went with every request.
    assert llm.requests[0]["max_tokens"] == family.sampling["max_tokens"]


async def test_a_malformed_native_reply_gets_the_family_correction(
    planner: PlannerService, llm: FakeLLM, bus: NatsClient, as_family: Callable[[str], None]
) -> None:
    as_family("uitars")
    llm.push(
        {"content": "I would click the terminal icon now."},
        {"content": "Thought: fine.\nAction: finished(content='corrected')"},
    )
    running = await running_task(bus, "anything").start()
    finished = (await running.outcome()).finished
    assert finished["status"] == "succeeded" and finished["reply"] == "corrected"
    told = llm.requests[1]["messages"][-1]["content"][-1]["text"]
    assert "no 'Action:' line" in told and "Action: click(start_box=" in told


# --- call_user: the task waits for the person -------------------------------------------


async def test_call_user_waits_and_an_answer_resumes_it(
    planner: PlannerService, llm: FakeLLM, bus: NatsClient, as_family: Callable[[str], None]
) -> None:
    as_family("uitars")
    question = "Which file should I open: report.pdf or notes.txt?"
    llm.push(
        {"content": f"Thought: {question}\nAction: call_user()"},
        {"content": "Thought: The user chose notes.\nAction: finished(content='notes.txt it is')"},
    )
    running = await running_task(bus, "open the file").start()
    await running.until(
        lambda: any(e.get("state") == "needs_user" for e in running.of("task.state")),
        "needs_user",
    )
    waiting = running.of("task.state")[-1]
    assert waiting["question"] == question
    state = await session_state(bus, running.task.session_id)
    assert state["status"] == "needs_user" and state["question"] == question
    # Nothing more is asked of the model while the person has not answered.
    await asyncio.sleep(1.5)
    assert len(llm.requests) == 1
    assert not running.of("task.finished")

    await running.control("answer", "notes.txt")
    finished = (await running.outcome()).finished
    assert finished["status"] == "succeeded" and finished["reply"] == "notes.txt it is"
    assert [e["state"] for e in running.of("task.state")] == ["needs_user", "running"]
    said = [e for e in running.of("message") if e["role"] == "user"]
    assert [e["text"] for e in said] == ["notes.txt"]
    # The answer reached the model, after its own call_user turn.
    second = llm.requests[1]["messages"]
    assert second[-3]["role"] == "assistant" and "call_user()" in second[-3]["content"]
    assert second[-2] == {"role": "user", "content": "The user answered: notes.txt"}
    final = await session_state(bus, running.task.session_id)
    assert final["status"] == "succeeded" and final["question"] is None
    # A planner that resumed this task would find the answer in its history.
    assert [h["outcome"] for h in final["history"]] == ["The user answered: notes.txt"]


async def test_stop_while_waiting_for_the_user_ends_the_task(
    planner: PlannerService, llm: FakeLLM, bus: NatsClient, as_family: Callable[[str], None]
) -> None:
    as_family("uitars")
    llm.push({"content": "Thought: I need the password.\nAction: call_user()"})
    running = await running_task(bus, "log in").start()
    await running.until(
        lambda: any(e.get("state") == "needs_user" for e in running.of("task.state")),
        "needs_user",
    )
    await running.control("stop")
    finished = (await running.outcome()).finished
    assert finished["status"] == "stopped" and finished["error"]["code"] == "stopped"
    assert len(llm.requests) == 1
    assert (await session_state(bus, running.task.session_id))["status"] == "stopped"
    # An answer that comes too late changes nothing.
    await running.control("answer", "hunter2")
    await asyncio.sleep(0.5)
    assert len(llm.requests) == 1
