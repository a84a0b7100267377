"""Take the README screenshot of the web page: ``python -m selfagent.gateway.tests.screenshot_ui``.

Everything on it is real (nats-server, Xvnc + Xfce desktop, gateway, Chromium);
the agent's steps are played on the desktop with xdotool and announced on
NATS as the planner would, since no LLM runs here.
Run from the repository root; writes ``docs/ui.png`` unless a path is given.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from faststream.nats import NatsBroker
from playwright.async_api import async_playwright

from selfagent.bus.natsd import EmbeddedNats
from selfagent.schemas import (
    AgentMessage,
    ClickAction,
    KeyAction,
    StepExecuted,
    StepGrounded,
    StepPlanned,
    TaskFinished,
    TaskStarted,
    TypeAction,
    subjects,
)
from tests.harness.desktop import Desktop, start_desktop

from .stack import start_gateway

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def play(desktop: Desktop, broker: NatsBroker, sid: str) -> None:
    tid = "demo-task"

    async def emit(event: object) -> None:
        await broker.publish(event, subjects.session_event(sid, event.kind))  # type: ignore[attr-defined]
        await asyncio.sleep(0.15)

    prompt = "Open a terminal and tell me how much space is left on the disk"
    await emit(TaskStarted(session_id=sid, task_id=tid, prompt=prompt))

    click = ClickAction(target="Terminal Emulator launcher in the bottom panel")
    await emit(
        StepPlanned(
            session_id=sid,
            task_id=tid,
            step=1,
            action=click,
            thought="A terminal is the quickest way to check disk usage; the panel has a launcher.",
        )
    )
    await emit(
        StepGrounded(
            session_id=sid,
            task_id=tid,
            step=1,
            target=click.target or "",
            x=540,
            y=700,
            method="ui-tars",
        )
    )
    await asyncio.to_thread(
        subprocess.Popen,
        [
            "xfce4-terminal",
            "--geometry",
            "92x20+250+120",
            f"--working-directory={desktop.home}",
        ],
        env=desktop.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.to_thread(desktop.wait_for_window, "Terminal")
    await asyncio.sleep(1.0)
    await emit(
        StepExecuted(
            session_id=sid,
            task_id=tid,
            step=1,
            action=click,
            ok=True,
            settle_ms=410,
            duration_ms=612,
        )
    )

    typed = TypeAction(text="df -h /")
    await emit(StepPlanned(session_id=sid, task_id=tid, step=2, action=typed))
    await asyncio.to_thread(desktop.xdotool, "type", "--delay", "30", "df -h /")
    await emit(
        StepExecuted(session_id=sid, task_id=tid, step=2, action=typed, ok=True, duration_ms=264)
    )

    enter = KeyAction(keys="Return")
    await emit(StepPlanned(session_id=sid, task_id=tid, step=3, action=enter))
    await asyncio.to_thread(desktop.xdotool, "key", "Return")
    await asyncio.sleep(0.8)
    df = await asyncio.to_thread(subprocess.run, ["df", "-h", "/"], capture_output=True, text=True)
    usage = df.stdout.splitlines()
    free = usage[-1].split()[3] if len(usage) > 1 else "?"
    await emit(
        StepExecuted(session_id=sid, task_id=tid, step=3, action=enter, ok=True, duration_ms=95)
    )
    await emit(AgentMessage(session_id=sid, task_id=tid, text=f"df reports {free} available on /."))
    await emit(
        TaskFinished(
            session_id=sid,
            task_id=tid,
            status="succeeded",
            reply=f"There is {free} of free space on the root filesystem.",
            steps=3,
        )
    )


async def main(out: Path) -> None:
    nats = EmbeddedNats().start()
    desktop = start_desktop()
    gateway = start_gateway(nats.url, desktop.vnc_port, desktop.password)
    broker = NatsBroker(nats.url)
    try:
        await broker.connect()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            await page.goto(f"{gateway.url}/?token={gateway.token}")
            await page.wait_for_selector('[data-testid="vnc-status"][data-state="connected"]')
            await page.wait_for_selector('[data-testid="events-status"][data-state="connected"]')
            sid = await page.evaluate("window.selfagent.sessionId")
            await play(desktop, broker, sid)
            await page.locator('[data-testid="result"]').wait_for()
            await asyncio.sleep(1.5)
            out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(out))
            await browser.close()
    finally:
        await broker.stop()
        gateway.stop()
        desktop.stop()
        nats.cleanup()
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/ui.png")))
