"""Take the README screenshot of the web page from a real run of the whole stack.

    .venv/bin/python scripts/screenshot_ui.py docs/ui.png

Everything on the picture is real: nats-server, the native sandbox desktop,
the planner, grounder, actuator and gateway as processes (local mode), and
the page in headless Chromium. Only the model is scripted (the test suite's
fake OpenAI-compatible server), so the picture is the same on every run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run from anywhere: the test harness lives in the repository, not the package.
sys.path.insert(0, str(REPO))

from playwright.async_api import async_playwright  # noqa: E402

from selfagent.bus.natsd import free_port  # noqa: E402
from selfagent.local import LocalStack  # noqa: E402
from tests.harness.fakellm import FakeLLM, tool_call  # noqa: E402
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, EVENTS_LIVE, VNC_LIVE  # noqa: E402

PROMPT = "Open a terminal and tell me which Python version is installed"
CANVAS_PAINTED = """() => {
    const c = document.querySelector('[data-testid="screen"] canvas');
    if (!c) return false;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return d.some((v, i) => i % 4 !== 3 && v !== 0);
}"""


def computer(thought: str | None = None, **arguments: Any) -> dict[str, Any]:
    reply = tool_call("computer", arguments)
    if thought:
        reply["content"] = thought
    # A moment per reply, like a real model, so the page animates naturally.
    reply["delay"] = 0.4
    return reply


def python_version() -> str:
    # Local mode runs the sandbox on this machine with this PATH, so the
    # terminal on the picture prints exactly this; the answer matches it.
    found = subprocess.run(
        ["python3", "--version"], capture_output=True, text=True, check=True, timeout=10
    )
    return found.stdout.strip() or found.stderr.strip()


def script(llm: FakeLLM) -> None:
    version = python_version()
    llm.push(
        computer(
            "A terminal is the quickest way to ask Python for its version.",
            action="key",
            keys="ctrl+alt+t",
        ),
        computer(action="type", text="python3 --version"),
        computer(action="key", keys="Return"),
        computer(action="done", message=f"{version} is installed."),
    )


def prepare_home(stack: LocalStack) -> None:
    assert stack.sandbox_home is not None
    # The sandbox home is a temporary directory here; a short prompt, as the
    # container's `agent` user would have, keeps it off the picture.
    (stack.sandbox_home / ".bashrc").write_text("PS1='agent@sandbox:\\w$ '\n")


async def shoot(stack: LocalStack, out: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1440, "height": 900})
            page = await context.new_page()
            await page.goto(f"{stack.gateway_url}/?token={stack.token}")
            await page.wait_for_selector(VNC_LIVE, timeout=30000)
            await page.wait_for_selector(EVENTS_LIVE, timeout=10000)
            await page.wait_for_function(CANVAS_PAINTED, timeout=15000)
            await page.fill('[data-testid="prompt"]', PROMPT)
            await page.click('[data-testid="send"]')
            result = page.locator('[data-testid="result"]')
            await result.wait_for(timeout=120000)
            status = await result.get_attribute("data-status")
            if status != "succeeded":
                raise SystemExit(f"the demo task ended {status}: {await result.inner_text()}")
            # Let the last frame of the terminal reach the canvas, and the
            # pointer leave the composer so no hover state is captured.
            await page.mouse.move(700, 880)
            await page.locator('[data-testid="prompt"]').blur()
            await asyncio.sleep(2.0)
            out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(out))
        finally:
            await browser.close()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "ui.png")
    llm = FakeLLM().start()
    stack = LocalStack(
        gateway_port=free_port(),
        extra_env={
            "LLM_API_BASE_URL": llm.base_url,
            "LLM_MODEL": "scripted-demo",
            "LLM_API_KEY": "sk-demo",
            "GROUNDER_FAMILY": "ocr",
            "GROUNDER_CANARY": "false",
            "PLANNER_CANARY": "false",
        },
    )
    try:
        stack.start()
        prepare_home(stack)
        script(llm)
        asyncio.run(shoot(stack, out))
    finally:
        stack.stop(remove=True)
        llm.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
