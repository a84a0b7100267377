"""What each planner family sends per step, against the model's reference context rule.

For every family a scripted VLM answers a 10-step task natively (9 pointer
moves, then the family's "finished"), while the real planner observes and
acts on a real desktop (nats-server, Xvnc + Xfce, the actuator). For each
request it prints the prompt's characters (text only), the images it holds,
and the tokens the server reported in ``usage``. The scripted server counts
like a Qwen-style vision model: text at 4 characters a token, an image at one
token per 28x28 patch of the image actually sent.

The reference is each model's own context rule as its reference agent applies
it (UI-TARS and Seed: the 5 newest screenshots; Qwen2.5-VL's cookbook: the
current one; Qwen3-VL in OSWorld: 4 earlier plus the current; OpenCUA: 3 in
all; ``tools``: PLANNER_KEEP_SCREENSHOTS), with every earlier step kept as
text. Reference tokens for a request are its text tokens plus the rule's
images at the size sent. The goal: within 10% of the reference, never above.

    python -m bench.planner_families [--steps 10] [--width 1280 --height 720]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from PIL import Image

from selfagent.bus.natsd import EmbeddedNats
from selfagent.planner.config import Settings
from selfagent.planner.families import get_family
from selfagent.planner.families.tools import ToolsFamily
from selfagent.planner.service import PlannerService
from selfagent.planner.service import build as build_planner
from selfagent.schemas import TaskSubmitted, subjects
from tests.harness.actuator import running_actuator
from tests.harness.desktop import start_desktop
from tests.harness.fakellm import CHARS_PER_TOKEN, PATCH, FakeLLM, estimate_usage

SANDBOX = "bench"
FAMILIES = ("tools", "uitars", "uitars-1.0", "qwen2.5", "qwen3", "opencua", "seed")
KEEP_SCREENSHOTS = 3


def reference_images(family: str, past_steps: int) -> int:
    """Screenshots the model's reference agent sends with ``past_steps`` earlier steps."""
    rule: dict[str, Callable[[int], int]] = {
        # Ours: the append window (families/tools.py), newest two after a drop.
        "tools": lambda n: n - ToolsFamily().shown([None] * n) + 1,  # type: ignore[list-item]
        "uitars": lambda n: min(n, 4) + 1,
        "uitars-1.0": lambda n: min(n, 4) + 1,
        "seed": lambda n: min(n, 4) + 1,
        "qwen2.5": lambda n: 1,
        "qwen3": lambda n: min(n, 4) + 1,
        "opencua": lambda n: min(n, 2) + 1,
    }
    return rule[family](past_steps)


def move(family: str, x: int, y: int) -> dict[str, Any]:
    """A harmless pointer move in the family's own syntax (x, y in its coordinates)."""
    if family == "tools":
        return {"tool": "computer", "arguments": {"action": "move", "x": x, "y": y}}
    if family in ("uitars", "uitars-1.0"):
        return {
            "content": f"Thought: I move the pointer to look at the panel.\n"
            f"Action: hover(start_box='<|box_start|>({x},{y})<|box_end|>')"
        }
    if family == "seed":
        return {
            "content": "Thought: I move the pointer.\n"
            f"Action: hover(point='<point>{x} {y}</point>')"
        }
    if family in ("qwen2.5", "qwen3"):
        call = {"name": "computer_use", "arguments": {"action": "mouse_move", "coordinate": [x, y]}}
        return {
            "content": "Thought: I move the pointer.\nAction: Move the pointer.\n"
            f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        }
    return {
        "content": "## Thought:\nI move the pointer to look at the panel.\n\n## Action:\n"
        f"Move the pointer.\n\n## Code:\n```python\npyautogui.moveTo({x}, {y})\n```"
    }


def finish(family: str) -> dict[str, Any]:
    if family == "tools":
        return {"tool": "computer", "arguments": {"action": "done", "message": "done"}}
    if family in ("uitars", "uitars-1.0", "seed"):
        return {"content": "Thought: Done.\nAction: finished(content='done')"}
    if family in ("qwen2.5", "qwen3"):
        call = {"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}
        return {"content": f"done\n<tool_call>\n{json.dumps(call)}\n</tool_call>"}
    return {
        "content": "## Thought:\nDone.\n\n## Action:\nFinish.\n\n## Code:\n```code\n"
        "computer.terminate(status='success', answer='done')\n```"
    }


@dataclass
class Recorder:
    """The usage the scripted server reported, request by request."""

    reported: list[dict[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: dict[str, Any], reply: dict[str, Any]) -> dict[str, int]:
        usage = estimate_usage(request, reply)
        with self.lock:
            self.reported.append(usage)
        return usage


@dataclass
class Row:
    chars: int
    images: list[tuple[int, int]]
    tokens: int
    reference_images: int

    def image_tokens(self) -> int:
        return sum(math.ceil(w / PATCH) * math.ceil(h / PATCH) for w, h in self.images)

    def reference_tokens(self) -> int:
        text = self.tokens - self.image_tokens()
        per_image = self.image_tokens() / len(self.images)
        return round(text + per_image * self.reference_images)


def measure(request: dict[str, Any], usage: dict[str, int], past: int, family: str) -> Row:
    chars = 0
    images: list[tuple[int, int]] = []
    for message in request["messages"]:
        content = message["content"]
        parts: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content
        )
        for part in parts:
            if part["type"] == "image_url":
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                with Image.open(io.BytesIO(data)) as image:
                    images.append(image.size)
            else:
                chars += len(part["text"])
    return Row(chars, images, usage["prompt_tokens"], reference_images(family, past))


async def run_family(
    family: str,
    planner: PlannerService,
    llm: FakeLLM,
    recorder: Recorder,
    bus: Any,
    steps: int,
    screen: tuple[int, int],
) -> list[Row]:
    fam = get_family(family, keep_screenshots=KEEP_SCREENSHOTS)
    planner.settings = planner.settings.model_copy(update={"family": family})
    llm.reset()
    recorder.reported.clear()
    width, height = fam.image_size(*screen) if fam.resize else screen
    replies = []
    for index in range(steps - 1):
        x, y = 200 + 60 * index, 150 + 20 * index
        if fam.space == "rel1000":
            x, y = round(x * 1000 / width), round(y * 1000 / height)
        replies.append(move(family, x, y))
    llm.push(*replies, finish(family))
    task = TaskSubmitted(prompt="Look around the desktop, then finish.", sandbox_id=SANDBOX)
    done = asyncio.Event()

    async def on_event(msg: Any) -> None:
        if json.loads(msg.data)["kind"] == "task.finished":
            done.set()

    sub = await bus.subscribe(subjects.session_events(task.session_id), cb=on_event)
    await bus.jetstream().publish(subjects.TASK_SUBMIT, task.model_dump_json().encode())
    await asyncio.wait_for(done.wait(), 300)
    await sub.unsubscribe()
    return [
        measure(request, usage, past, family)
        for past, (request, usage) in enumerate(zip(llm.requests, recorder.reported, strict=True))
    ]


def report(family: str, rows: list[Row]) -> tuple[float, float]:
    print(f"\n{family}: {len(rows)} requests")
    print("  step  prompt chars  images (ref)  tokens  ref tokens  ratio")
    ratios = []
    for step, row in enumerate(rows, 1):
        ratio = row.tokens / row.reference_tokens()
        ratios.append(ratio)
        print(
            f"  {step:>4}  {row.chars:>12}  {len(row.images):>6} ({row.reference_images})"
            f"  {row.tokens:>6}  {row.reference_tokens():>10}  {ratio:5.2f}"
        )
    size = rows[0].images[-1]
    print(
        f"  image sent {size[0]}x{size[1]}; tokens per step: mean "
        f"{statistics.mean(r.tokens for r in rows):.0f}, last {rows[-1].tokens}; "
        f"ratio to reference {min(ratios):.2f}-{max(ratios):.2f}"
    )
    return min(ratios), max(ratios)


async def main(steps: int, width: int, height: int) -> None:
    nats_server = EmbeddedNats().start()
    desktop = start_desktop(width, height)
    recorder = Recorder()
    llm = FakeLLM(usage=recorder).start()
    planner = build_planner(
        Settings(
            nats_url=nats_server.url,
            llm_api_base_url=llm.base_url,
            llm_model="bench",
            keep_screenshots=KEEP_SCREENSHOTS,
            max_steps=steps + 5,
            canary=False,
        )
    )
    stack = contextlib.AsyncExitStack()
    try:
        await stack.enter_async_context(running_actuator(nats_server.url, desktop, SANDBOX))
        await planner.start()
        bus = await nats.connect(nats_server.url)
        summary = []
        started = time.monotonic()
        for family in FAMILIES:
            rows = await run_family(family, planner, llm, recorder, bus, steps, (width, height))
            low, high = report(family, rows)
            summary.append((family, rows, low, high))
        await bus.close()
        print(f"\nsummary ({width}x{height}, {steps} steps, {time.monotonic() - started:.0f} s)")
        print("  family      images/request   tokens/step (mean, last)  vs reference  goal")
        for family, rows, low, high in summary:
            images = ",".join(str(len(r.images)) for r in rows)
            ok = low >= 0.9 and high <= 1.0
            print(
                f"  {family:<10}  {images:<15}  {statistics.mean(r.tokens for r in rows):>7.0f}, "
                f"{rows[-1].tokens:>6}         {low:.2f}-{high:.2f}     {'met' if ok else 'MISSED'}"
            )
        print(f"  (text at {CHARS_PER_TOKEN} chars/token, images at {PATCH}x{PATCH} px/token)")
    finally:
        await planner.stop()
        await stack.aclose()
        llm.stop()
        desktop.stop()
        nats_server.cleanup()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.width, args.height))


if __name__ == "__main__":
    cli()
