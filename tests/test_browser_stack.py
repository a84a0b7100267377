"""The web page in a real headless Chromium against the whole local stack.

Unlike test_browser.py, nothing here publishes events by hand: the person's
instruction goes from the chat box through the gateway to the real planner,
whose scripted LLM drives the real actuator on the real Xfce desktop, and the
page shows what happens through its event socket and its noVNC canvas.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from selfagent.local import LocalStack
from tests.harness.api import computer
from tests.harness.fakellm import FakeLLM
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, EVENTS_LIVE, VNC_LIVE, tid

pytestmark = [pytest.mark.browser, pytest.mark.desktop]

# A canvas with real desktop pixels: any colour channel that is not black.
CANVAS_PAINTED = """() => {
    const c = document.querySelector('[data-testid="screen"] canvas');
    if (!c) return false;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return d.some((v, i) => i % 4 !== 3 && v !== 0);
}"""

Rect = tuple[int, int, int, int]
THOUGHT = "A terminal is the quickest way to write a file."
# How long "the pointer did not move" is watched for after a click the
# gateway must hold back.
NOTHING_HAPPENS = 0.5


def xdotool(stack: LocalStack, *args: str) -> str:
    env = {**os.environ, "DISPLAY": f":{stack.display_num}"}
    done = subprocess.run(
        ["xdotool", *args], env=env, capture_output=True, text=True, timeout=20, check=False
    )
    return done.stdout


def pointer(stack: LocalStack) -> tuple[int, int]:
    fields = dict(part.split(":", 1) for part in xdotool(stack, "getmouselocation").split())
    return int(fields["x"]), int(fields["y"])


def terminal_windows(stack: LocalStack) -> list[str]:
    return xdotool(stack, "search", "--onlyvisible", "--class", "xfce4-terminal").split()


def close_terminals(stack: LocalStack) -> None:
    """Other tests of the session leave terminals open; start from a bare desktop."""
    for window in terminal_windows(stack):
        # All terminal windows share one client, so this closes every one of them.
        xdotool(stack, "windowkill", window)
    deadline = time.monotonic() + 10
    while terminal_windows(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not terminal_windows(stack), "could not close the terminals left by earlier tests"


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def window_rect(stack: LocalStack, window: str) -> Rect:
    shell = xdotool(stack, "getwindowgeometry", "--shell", window)
    geometry = dict(line.split("=", 1) for line in shell.split())
    x, y = int(geometry["X"]), int(geometry["Y"])
    return x, y, x + int(geometry["WIDTH"]), y + int(geometry["HEIGHT"])


def post(stack: LocalStack, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + path,
        json=body,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=10,
    )


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser, stack: LocalStack) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    tab = await context.new_page()
    response = await tab.goto(f"{stack.gateway_url}/?token={stack.token}")
    assert response is not None and response.status == 200
    await tab.wait_for_selector(VNC_LIVE, timeout=20000)
    await tab.wait_for_selector(EVENTS_LIVE, timeout=10000)
    await tab.wait_for_function(CANVAS_PAINTED, timeout=15000)
    # The page reopens the newest session with its history: start a new one,
    # so each test sees only its own steps.
    before = await tab.evaluate("window.selfagent.sessionId")
    await tab.click('[data-testid="new-session"]')
    await tab.wait_for_function("(sid) => window.selfagent.sessionId !== sid", arg=before)
    await tab.wait_for_selector(VNC_LIVE, timeout=20000)
    await tab.wait_for_selector(EVENTS_LIVE, timeout=10000)
    await tab.wait_for_function(CANVAS_PAINTED, timeout=15000)
    yield tab
    sid = await tab.evaluate("window.selfagent.sessionId")
    await context.close()
    # The takeover is global to the sandbox; never leave it to the next test.
    released = await asyncio.to_thread(
        post, stack, f"/api/sessions/{sid}/control", {"command": "release"}
    )
    assert released.status_code == 202, released.text


async def canvas_pixels(page: Page, rect: Rect, step: int) -> list[tuple[int, int, int]]:
    """RGB samples every ``step`` pixels inside ``rect`` of the canvas (framebuffer pixels)."""
    samples: list[list[int]] = await page.evaluate(
        """([x0, y0, x1, y1, step]) => {
            const c = document.querySelector('[data-testid="screen"] canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const out = [];
            for (let y = y0; y < Math.min(y1, c.height); y += step)
              for (let x = x0; x < Math.min(x1, c.width); x += step) {
                const i = (y * c.width + x) * 4;
                out.push([d[i], d[i + 1], d[i + 2]]);
              }
            return out;
        }""",
        [*rect, step],
    )
    return [(r, g, b) for r, g, b in samples]


async def settled_canvas(
    page: Page, rect: Rect, step: int, quiet: float = 0.2, timeout: float = 30
) -> list[tuple[int, int, int]]:
    """Canvas samples once they stop changing for ``quiet`` seconds, as the actuator
    waits for the screen to settle: the desktop has repainted and noVNC drawn it."""
    deadline = time.monotonic() + timeout
    last = await canvas_pixels(page, rect, step)
    while True:
        await asyncio.sleep(quiet)
        now = await canvas_pixels(page, rect, step)
        if now == last:
            return now
        assert time.monotonic() < deadline, f"the canvas kept changing for {timeout} s"
        last = now


def changed_share(before: list[tuple[int, int, int]], after: list[tuple[int, int, int]]) -> float:
    assert before and len(before) == len(after)
    changed = sum(
        any(abs(a - b) > 24 for a, b in zip(old, new, strict=True))
        for old, new in zip(before, after, strict=True)
    )
    return changed / len(before)


async def page_point(page: Page, x: int, y: int) -> tuple[float, float]:
    """Where framebuffer pixel (x, y) is on the page: noVNC scales the canvas to fit."""
    canvas = page.locator(f"{tid('screen')} canvas")
    box = await canvas.bounding_box()
    assert box is not None
    width, height = await canvas.evaluate("c => [c.width, c.height]")
    return (
        box["x"] + (x + 0.5) * box["width"] / width,
        box["y"] + (y + 0.5) * box["height"] / height,
    )


async def send(page: Page, text: str) -> None:
    await page.fill(tid("prompt"), text)
    await page.click(tid("send"))


async def test_instruction_from_the_chat_box_runs_on_the_desktop(
    page: Page, stack: LocalStack, llm: FakeLLM
) -> None:
    assert stack.sandbox_home is not None
    target = stack.sandbox_home / "Desktop" / "from-browser.txt"
    target.unlink(missing_ok=True)
    await asyncio.to_thread(close_terminals, stack)
    whole: Rect = (0, 0, stack.screen[0], stack.screen[1])
    # Where the closed windows were, the desktop repaints: wait until the canvas shows it.
    desktop_before = await settled_canvas(page, whole, 8)
    assert len(set(desktop_before)) > 10, "the canvas does not show the desktop"

    # Each reply comes a moment later, as a real model's would, so the page
    # can be seen updating between steps.
    llm.push(
        {**computer(action="key", keys="ctrl+alt+t"), "content": THOUGHT, "delay": 0.5},
        {**computer(action="type", text="echo browser-ok > ~/Desktop/from-browser.txt")},
        {**computer(action="key", keys="Return"), "delay": 1.5},
        {**computer(action="done", message="Wrote the file."), "delay": 1.5},
    )
    await send(page, "Open a terminal and write browser-ok into a file on the desktop")
    await page.locator(tid("user-message")).wait_for(timeout=5000)
    assert await page.locator(tid("prompt")).input_value() == ""

    steps = page.locator(tid("step"))
    first_ok = f'{tid("step")}[data-state="ok"]'
    await page.wait_for_selector(first_ok, timeout=30000)
    # Seen while the task still runs: the timeline is live, not filled at the end.
    assert await page.locator(tid("result")).count() == 0
    assert await page.locator(tid("status-badge")).get_attribute("data-status") == "running"
    assert "Press ctrl+alt+t" in await steps.first.inner_text()
    # The model's reasoning is shown once, in its step card, not again as a bubble.
    assert await steps.first.locator(".step-thought").inner_text() == THOUGHT
    assert THOUGHT not in await page.locator(tid("timeline")).evaluate(
        "t => [...t.querySelectorAll('.bubble')].map((b) => b.textContent).join('|')"
    )

    result = page.locator(tid("result"))
    await result.wait_for(timeout=60000)
    assert await result.get_attribute("data-status") == "succeeded"
    assert "Wrote the file." in await result.inner_text()
    assert await page.locator(tid("status-badge")).get_attribute("data-status") == "succeeded"

    texts = [await steps.nth(i).inner_text() for i in range(await steps.count())]
    assert len(texts) == 4, texts
    expected = [
        "Press ctrl+alt+t",
        "Type “echo browser-ok > ~/Desktop/from-browser.txt”",
        "Press Return",
        "Finish",
    ]
    for text, action in zip(texts, expected, strict=True):
        assert action in text, (action, text)
    states = [await steps.nth(i).get_attribute("data-state") for i in range(4)]
    assert states == ["ok"] * 4, states
    for i in range(4):
        assert (await steps.nth(i).locator(".step-state").inner_text()).startswith("✓")

    # The shell writes the file right after Return; allow it a moment.
    await asyncio.to_thread(wait_for_file, target, 5)
    assert target.read_text() == "browser-ok\n"

    # The canvas shows the terminal the agent opened: where its window is,
    # the pixels are no longer the bare desktop's.
    windows = await asyncio.to_thread(terminal_windows, stack)
    assert len(windows) == 1, windows
    rect = await asyncio.to_thread(window_rect, stack, windows[0])
    x0, y0, x1, y1 = rect
    assert x1 - x0 > 200 and y1 - y0 > 100, rect
    before = [
        desktop_before[(y // 8) * len(range(0, stack.screen[0], 8)) + x // 8]
        for y in range(0, stack.screen[1], 8)
        for x in range(0, stack.screen[0], 8)
        if x0 <= x < x1 and y0 <= y < y1
    ]
    inside: Rect = (x0 + (-x0) % 8, y0 + (-y0) % 8, x1, y1)
    after = await canvas_pixels(page, inside, 8)
    share = changed_share(before, after)
    assert share > 0.5, f"only {share:.0%} of the terminal's region changed on the canvas"
    # The terminal's text area is dark: most samples there are near black now.
    dark = sum(max(px) < 60 for px in after) / len(after)
    assert dark > 0.4, f"the terminal region is not dark ({dark:.0%})"
    await asyncio.to_thread(close_terminals, stack)


async def test_stop_button_stops_a_running_task(
    page: Page, stack: LocalStack, llm: FakeLLM
) -> None:
    assert stack.sandbox_home is not None
    never = stack.sandbox_home / "Desktop" / "after-stop.txt"
    never.unlink(missing_ok=True)
    llm.push(
        computer(action="move", x=300, y=300),
        # The planner waits for this reply while Stop is clicked; it comes
        # back inside the planner's LLM timeout and must not be carried out.
        {**computer(action="shell", command=f"touch {never}"), "delay": 3.5},
        computer(action="done", message="should never be asked for"),
    )
    await send(page, "Do something slow")
    await page.wait_for_selector(f'{tid("step")}[data-state="ok"]', timeout=30000)
    assert await page.locator(tid("status-badge")).get_attribute("data-status") == "running"
    stop = page.locator(tid("btn-stop"))
    assert await stop.is_enabled()
    await stop.click()

    result = page.locator(tid("result"))
    await result.wait_for(timeout=20000)
    assert await result.get_attribute("data-status") == "stopped"
    assert "Stopped" in await result.inner_text()
    badge = page.locator(tid("status-badge"))
    assert await badge.get_attribute("data-status") == "stopped"
    assert await badge.inner_text() == "Stopped"
    assert await stop.is_disabled()
    assert await page.locator(tid("step")).count() == 1
    # The delayed reply was the last one asked for, and it was not run: checked
    # once the fake has answered it (or found the planner had hung up on it),
    # so that a planner still waiting for it would have had it by then.
    deadline = time.monotonic() + 10
    while llm.in_flight > 0:
        assert time.monotonic() < deadline, "the delayed reply never came back"
        await asyncio.sleep(0.05)
    assert len(llm.requests) == 2
    assert not never.exists()


async def test_pause_and_resume_from_the_page(page: Page, stack: LocalStack, llm: FakeLLM) -> None:
    assert stack.sandbox_home is not None
    never = stack.sandbox_home / "Desktop" / "while-paused.txt"
    never.unlink(missing_ok=True)
    llm.push(
        computer(action="move", x=300, y=300),
        # The planner waits for this reply while Pause is clicked; it comes
        # back during the pause, so it is dropped and the model asked again.
        {**computer(action="shell", command=f"touch {never}"), "delay": 2.5},
        computer(action="move", x=500, y=400),
        {**computer(action="done", message="Moved the pointer twice."), "delay": 0.5},
    )
    await send(page, "Move the pointer around, slowly")
    await page.wait_for_selector(f'{tid("step")}[data-state="ok"]', timeout=30000)
    # Pause while the model call for step 2 is pending, not between calls.
    deadline = time.monotonic() + 10
    while len(llm.requests) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(llm.requests) == 2 and llm.in_flight == 1, (len(llm.requests), llm.in_flight)

    badge = page.locator(tid("status-badge"))
    pause, resume = page.locator(tid("btn-pause")), page.locator(tid("btn-resume"))
    stop = page.locator(tid("btn-stop"))
    assert await badge.get_attribute("data-status") == "running"
    assert await pause.is_enabled()
    assert await resume.is_disabled()
    await pause.click()

    # The planner holds once the pending reply is in: at most its delay later.
    await page.wait_for_selector(f'{tid("status-badge")}[data-status="paused"]', timeout=10000)
    assert await badge.inner_text() == "Paused"
    assert await pause.is_disabled()
    assert await resume.is_enabled()
    assert await stop.is_enabled()
    # Held: the reply that came back during the pause is not carried out and
    # the model is not asked again, however long the pause lasts. The badge
    # says "paused" only once the reply is in (the planner holds between
    # steps), so this wait is the hold itself, the one thing tested: a planner
    # that went on would ask again within a screenshot's time (~0.1 s).
    await asyncio.sleep(1.0)
    assert llm.in_flight == 0
    assert len(llm.requests) == 2
    assert await page.locator(tid("step")).count() == 1
    assert not never.exists()
    assert await page.locator(tid("result")).count() == 0
    assert await badge.get_attribute("data-status") == "paused"

    await resume.click()
    result = page.locator(tid("result"))
    await result.wait_for(timeout=30000)
    assert await result.get_attribute("data-status") == "succeeded"
    assert "Moved the pointer twice." in await result.inner_text()
    assert await badge.get_attribute("data-status") == "succeeded"
    assert await badge.inner_text() == "Done"

    steps = page.locator(tid("step"))
    texts = [await steps.nth(i).inner_text() for i in range(await steps.count())]
    assert len(texts) == 3, texts
    expected = ["Move the pointer to (300, 300)", "Move the pointer to (500, 400)", "Finish"]
    for text, action in zip(texts, expected, strict=True):
        assert action in text, (action, text)
    states = [await steps.nth(i).get_attribute("data-state") for i in range(3)]
    assert states == ["ok"] * 3, states
    lines = await page.locator(f"{tid('timeline')} .state-line").all_text_contents()
    assert lines == ["paused", "running"], lines
    # Asked again after the resume, and told that the screen may have changed.
    assert len(llm.requests) == 4
    assert "paused" in str(llm.requests[2]["messages"][-1]["content"])
    assert not never.exists()


async def test_take_over_and_release_gate_the_real_pointer(page: Page, stack: LocalStack) -> None:
    await asyncio.to_thread(close_terminals, stack)
    # Points on the bare desktop background: clicking there disturbs nothing.
    home, spot, other = (40, 600), (900, 420), (1000, 300)

    async def pointer_settles_at(expected: tuple[int, int], timeout: float = 5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            x, y = await asyncio.to_thread(pointer, stack)
            if abs(x - expected[0]) <= 2 and abs(y - expected[1]) <= 2:
                return True
            await asyncio.sleep(0.1)
        return False

    async def park() -> None:
        await asyncio.to_thread(xdotool, stack, "mousemove", str(home[0]), str(home[1]))
        assert await pointer_settles_at(home)

    # View only: the page's pointer goes nowhere. Each check below is a
    # "nothing happens" window (a forwarded pointer event lands within ~0.1 s;
    # nothing outside the gateway process can tell that it dropped one).
    await park()
    await page.mouse.click(*await page_point(page, *other))
    await asyncio.sleep(NOTHING_HAPPENS)
    assert await asyncio.to_thread(pointer, stack) == home

    await page.click(tid("btn-takeover"))
    await page.wait_for_selector(f'{tid("mode-badge")}[data-mode="control"]', timeout=5000)
    await page.mouse.click(*await page_point(page, *spot))
    assert await pointer_settles_at(spot), await asyncio.to_thread(pointer, stack)

    await page.click(tid("btn-release"))
    await page.wait_for_selector(f'{tid("mode-badge")}[data-mode="view"]', timeout=5000)
    await park()
    await page.mouse.click(*await page_point(page, *other))
    await asyncio.sleep(NOTHING_HAPPENS)
    assert await asyncio.to_thread(pointer, stack) == home

    # Even a page that sends input anyway (here: noVNC told to) is held back
    # by the gateway once the desktop is released.
    await page.evaluate("window.selfagent.rfb.viewOnly = false")
    await page.mouse.move(*await page_point(page, *other))
    await page.mouse.click(*await page_point(page, *spot))
    await asyncio.sleep(NOTHING_HAPPENS)
    assert await asyncio.to_thread(pointer, stack) == home
