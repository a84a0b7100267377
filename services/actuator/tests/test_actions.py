"""Every action against a real Xvnc + Xfce desktop, checked from outside the VNC link."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from selfagent.bus import RemoteError, request
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    ClickAction,
    DownloadFileAction,
    DragAction,
    ErrorCode,
    KeyAction,
    MoveAction,
    Observation,
    ObserveRequest,
    Point,
    ScrollAction,
    ShellAction,
    TypeAction,
    UploadFileAction,
    WaitAction,
    subjects,
)
from selfagent.schemas.actions import Action
from tests.harness.desktop import Desktop

pytestmark = pytest.mark.desktop
ACT = subjects.sandbox_act("test")


async def act(running: Any, action: Action, timeout: float = 30, **kw: Any) -> ActionResult:
    client: NatsBroker = running.client
    return await request(
        client, ACT, ActRequest(action=action, **kw), ActionResult, timeout=timeout
    )


def pointer(desktop: Desktop) -> tuple[int, int]:
    out = desktop.xdotool("getmouselocation")
    fields = dict(part.split(":") for part in out.split())
    return int(fields["x"]), int(fields["y"])


def window_origin(desktop: Desktop, wid: str) -> tuple[int, int]:
    # xwininfo's absolute origin; xdotool's getwindowgeometry double-counts
    # the frame offset under xfwm4.
    info = desktop.run("xwininfo", "-id", wid)
    values = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in info.splitlines())}
    return int(values["Absolute upper-left X"]), int(values["Absolute upper-left Y"])


def shared_file(path: Path, text: str) -> None:
    # Writable by the sandbox user too (in the container it is not us).
    path.write_text(text)
    path.chmod(0o666)


def close_window(desktop: Desktop, wid: str) -> None:
    desktop.xdotool("windowclose", wid)
    time.sleep(0.5)


async def test_move_and_click_put_the_pointer_there(actuator: Any, desktop: Desktop) -> None:
    for x, y in [(10, 400), (1279, 719), (640, 360)]:
        result = await act(actuator, MoveAction(x=x, y=y))
        assert result.ok and result.observation is not None
        assert pointer(desktop) == (x, y)
    result = await act(actuator, ClickAction(x=700, y=300, button="right"))
    assert pointer(desktop) == (700, 300)
    # A right click on the Xfce desktop opens its menu; Escape closes it.
    await act(actuator, KeyAction(keys="Escape"))
    assert result.settle_ms > 0


async def test_key_combo_opens_terminal(actuator: Any, desktop: Desktop) -> None:
    before = set(desktop.xdotool("search", "--onlyvisible", "--class", "xfce4-terminal").split())
    result = await act(actuator, KeyAction(keys="ctrl+alt+t"))
    assert result.ok
    wid = desktop.wait_for_window("Terminal", timeout=15)
    assert wid not in before
    # The screenshot after settling already shows the new window.
    assert result.settle_ms >= 300
    close_window(desktop, wid)


async def test_unicode_text_lands_in_a_real_editor(actuator: Any, desktop: Desktop) -> None:
    path = desktop.home / "unicode.txt"
    shared_file(path, "")
    desktop.spawn("mousepad", desktop.inside(path))
    wid = desktop.wait_for_window("unicode.txt", timeout=20)
    desktop.xdotool("windowactivate", "--sync", wid)
    time.sleep(0.5)
    text = "Grüße, naïve café — ünïcödé ✓ 日本語\nline two\ttabbed"
    result = await act(actuator, TypeAction(text=text))
    assert result.ok
    await act(actuator, KeyAction(keys="ctrl+s"))
    deadline = time.monotonic() + 10
    while path.read_text() != text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.read_text() == text
    close_window(desktop, wid)


async def test_scroll_moves_a_long_document(actuator: Any, desktop: Desktop) -> None:
    path = desktop.home / "long.txt"
    shared_file(path, "".join(f"line {n:04d}\n" for n in range(1, 2001)))
    desktop.spawn("mousepad", desktop.inside(path))
    wid = desktop.wait_for_window("long.txt", timeout=20)
    try:
        desktop.xdotool("windowactivate", "--sync", wid)
        desktop.xdotool("windowmove", wid, "100", "80")
        desktop.xdotool("windowsize", wid, "800", "500")
        time.sleep(0.8)
        observe = ObserveRequest(format="png")
        before = await act(actuator, MoveAction(x=400, y=300), observe=observe)
        scrolled = await act(
            actuator, ScrollAction(x=400, y=300, direction="down", amount=15), observe=observe
        )
        assert before.observation and scrolled.observation
        assert before.observation.screenshot and scrolled.observation.screenshot
        shot = scrolled.observation.screenshot.data_b64
        # A loaded machine may draw the scrolled text after the settle: look
        # again (a move to where the pointer already is does nothing).
        deadline = time.monotonic() + 10
        while shot == before.observation.screenshot.data_b64 and time.monotonic() < deadline:
            again = await act(actuator, MoveAction(x=400, y=300), observe=observe)
            assert again.observation and again.observation.screenshot
            shot = again.observation.screenshot.data_b64
        assert shot != before.observation.screenshot.data_b64, "the screen never changed"
        # Which line is now under the pointer? Mark it through the editor itself
        # and read the saved file: no pixel guessing.
        await act(actuator, ClickAction(x=300, y=200))
        await act(actuator, KeyAction(keys="Home"))
        await act(actuator, TypeAction(text="MARK "))
        await act(actuator, KeyAction(keys="ctrl+s"))
        deadline = time.monotonic() + 10
        marked: list[str] = []
        while time.monotonic() < deadline:
            marked = [ln for ln in path.read_text().splitlines() if ln.startswith("MARK ")]
            if marked:
                break
            time.sleep(0.2)
        assert len(marked) == 1, marked
        # Unscrolled, y=200 is within the first ~10 lines; 15 notches go far past.
        assert int(marked[0].split()[2]) > 30, marked
    finally:
        # Closed even on failure, so that a retry starts from a fresh window.
        close_window(desktop, wid)


async def test_drag_moves_a_window(actuator: Any, desktop: Desktop) -> None:
    desktop.spawn("xmessage", "-title", "dragme", "-geometry", "+300+300", "drag me around")
    try:
        wid = desktop.wait_for_window("dragme", timeout=10)
        time.sleep(0.5)
        x0, y0 = window_origin(desktop, wid)
        # Grab the title bar: xfwm4 draws it just above the client window.
        grab = Point(x=x0 + 30, y=y0 - 12)
        path = [grab, Point(x=grab.x + 150, y=grab.y + 60), Point(x=grab.x + 300, y=grab.y + 100)]
        result = await act(actuator, DragAction(path=path))
        assert result.ok
        time.sleep(0.3)
        x1, y1 = window_origin(desktop, wid)
        assert abs((x1 - x0) - 300) <= 4 and abs((y1 - y0) - 100) <= 4, (x0, y0, x1, y1)
    finally:
        desktop.run("pkill", "-f", "drag me around")


async def test_shell_exit_codes_and_output(actuator: Any, desktop: Desktop) -> None:
    ok = await act(actuator, ShellAction(command="echo out; echo err >&2; exit 3"))
    assert ok.exit_code == 3
    assert ok.output is not None and "out" in ok.output and "err" in ok.output
    inside = desktop.inside(desktop.home)
    home = await act(actuator, ShellAction(command="pwd", cwd=inside))
    assert home.output is not None and home.output.strip() == inside


async def test_shell_timeout_kills_the_process(actuator: Any, desktop: Desktop) -> None:
    # A unique duration makes the sleeping process findable by pgrep.
    marker = f"sleep {600 + os.getpid() % 1000}.123"
    started = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        await act(actuator, ShellAction(command=f"{marker}; echo never", timeout=1))
    assert caught.value.code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    left = desktop.run("pgrep", "-f", marker)
    assert left.strip() == "", "the timed-out command must be killed"


async def test_huge_output_is_truncated_not_fatal(actuator: Any) -> None:
    result = await act(
        actuator, ShellAction(command="head -c 10000000 /dev/zero | tr '\\0' a"), observe=None
    )
    assert result.ok and result.output is not None
    assert len(result.output) < 2_000_000
    assert "truncated" in result.output


async def test_binary_upload_download_round_trip(actuator: Any, desktop: Desktop) -> None:
    payload = os.urandom(256 * 1024) + bytes(range(256))
    data = base64.b64encode(payload).decode()
    target = desktop.inside(desktop.home / "sub" / "blob.bin")
    up = await act(actuator, UploadFileAction(path=target, data_b64=data), observe=None)
    assert up.ok
    assert (desktop.home / "sub" / "blob.bin").read_bytes() == payload
    down = await act(actuator, DownloadFileAction(path=target), observe=None)
    assert down.data is not None and base64.b64decode(down.data["data_b64"]) == payload


@pytest.mark.parametrize(
    ("action", "code", "words"),
    [
        (ClickAction(x=1280, y=10), ErrorCode.OFF_SCREEN, "outside the 1280x720"),
        (MoveAction(x=-1, y=10), ErrorCode.OFF_SCREEN, "outside"),
        (DragAction(path=[Point(x=1, y=1), Point(x=5, y=9999)]), ErrorCode.OFF_SCREEN, "9999"),
        (KeyAction(keys="ctrl+nosuchkey"), ErrorCode.UNKNOWN_KEY, "nosuchkey"),
        (ClickAction(target="the OK button"), ErrorCode.INVALID_ACTION, "ground"),
        (UploadFileAction(path="/tmp/x", data_b64="***"), ErrorCode.INVALID_ACTION, "base64"),
    ],
)
async def test_bad_actions_get_typed_errors_before_anything_runs(
    actuator: Any, desktop: Desktop, action: Action, code: ErrorCode, words: str
) -> None:
    await act(actuator, MoveAction(x=123, y=321))
    with pytest.raises(RemoteError) as caught:
        await act(actuator, action)
    assert caught.value.code == code
    assert words in str(caught.value)
    assert pointer(desktop) == (123, 321), "nothing may have been sent"


async def test_repeated_action_id_runs_once(actuator: Any, desktop: Desktop) -> None:
    first = ClickAction(x=200, y=650, button="left")
    await act(actuator, MoveAction(x=50, y=50))
    result = await act(actuator, first)
    assert not result.replayed
    await act(actuator, MoveAction(x=60, y=60))
    again = await act(actuator, first)
    assert again.replayed and again.action_id == first.id
    assert pointer(desktop) == (60, 60), "the repeat must not click again"


async def test_wait_and_observe(actuator: Any) -> None:
    started = time.monotonic()
    result = await act(actuator, WaitAction(seconds=0.5))
    assert time.monotonic() - started >= 0.5 and result.ok
    client: NatsBroker = actuator.client
    observation = await request(
        client,
        subjects.sandbox_observe("test"),
        ObserveRequest(format="png", max_width=640),
        Observation,
        timeout=10,
    )
    assert observation.screenshot is not None
    assert (observation.screenshot.width, observation.screenshot.height) == (640, 360)
    assert base64.b64decode(observation.screenshot.data_b64)[:8] == b"\x89PNG\r\n\x1a\n"


async def test_download_over_the_limit_is_refused(actuator: Any, desktop: Desktop) -> None:
    big = desktop.home / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    big.chmod(0o644)
    with pytest.raises(RemoteError) as caught:
        await act(actuator, DownloadFileAction(path=desktop.inside(big)), observe=None)
    assert caught.value.code == ErrorCode.INVALID_ACTION
    assert "exceeds the 5 MiB limit" in str(caught.value)
    missing = desktop.inside(desktop.home / "no-such-file")
    with pytest.raises(RemoteError) as gone:
        await act(actuator, DownloadFileAction(path=missing), observe=None)
    assert gone.value.code == ErrorCode.NOT_FOUND
