"""Executes actions on a desktop: validate first, then act, settle and observe.

Everything that can be checked is checked before the first byte goes to the
desktop, so a bad action never half-runs. Each action id runs at most once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import shlex
import time
from collections import OrderedDict
from typing import assert_never

from selfagent.errors import (
    ActionRejected,
    DesktopUnavailable,
    FileTooLarge,
    SandboxExecError,
    SandboxNotFound,
    UnknownKey,
)
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    ClickAction,
    CursorPositionAction,
    DoneAction,
    DownloadFileAction,
    DragAction,
    ErrorCode,
    ErrorInfo,
    FailAction,
    HoldKeyAction,
    KeyAction,
    LaunchAppAction,
    MoveAction,
    Observation,
    ObserveRequest,
    OpenUrlAction,
    Screenshot,
    ScreenshotAction,
    ScrollAction,
    ShellAction,
    TypeAction,
    UploadFileAction,
    WaitAction,
)
from selfagent.schemas.actions import Action

from .backend import VncDesktop
from .config import Settings
from .keys import keysym, parse_combo
from .sandbox_exec import SandboxExec

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 5 * 1024 * 1024
# Output beyond this is cut from the reply (the sandbox already caps at 1 MiB);
# the bus carries screenshots too and must stay under max_payload.
MAX_OUTPUT_CHARS = 256 * 1024

# Launchers the sandbox image ships, by the names models use.
APPS: dict[str, str] = {
    "terminal": "xfce4-terminal",
    "xfce4-terminal": "xfce4-terminal",
    "editor": "mousepad",
    "text editor": "mousepad",
    "mousepad": "mousepad",
    "files": "thunar",
    "file manager": "thunar",
    "thunar": "thunar",
    "browser": "x-www-browser",
    "web browser": "x-www-browser",
    "firefox": "firefox-esr",
    "firefox-esr": "firefox-esr",
    "chromium": "chromium",
}



def _fail(action_id: str, code: ErrorCode, message: str, started: float) -> ActionResult:
    return ActionResult(
        ok=False,
        action_id=action_id,
        error=ErrorInfo(code=code, message=message),
        duration_ms=(time.perf_counter() - started) * 1000,
    )


class Executor:
    def __init__(self, desktop: VncDesktop, sandbox: SandboxExec, settings: Settings) -> None:
        self.desktop = desktop
        self.sandbox = sandbox
        self.settings = settings
        self._lock = asyncio.Lock()
        self._seen: OrderedDict[str, asyncio.Future[ActionResult]] = OrderedDict()

    # --- public API ----------------------------------------------------------

    async def act(self, request: ActRequest) -> ActionResult:
        action_id = request.action.id
        earlier = self._seen.get(action_id)
        if earlier is not None:
            # A retried request (e.g. after a reply was lost) must not click twice.
            result = await asyncio.shield(earlier)
            return result.model_copy(update={"replayed": True})
        future: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()
        self._seen[action_id] = future
        while len(self._seen) > self.settings.idempotency_cache:
            self._seen.popitem(last=False)
        try:
            async with self._lock:
                result = await self._act(request)
        except BaseException as exc:
            result = _fail(
                action_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", time.perf_counter()
            )
            future.set_result(result)
            raise
        future.set_result(result)
        return result

    async def observe(self, request: ObserveRequest) -> Observation:
        try:
            await self.desktop.current_size()
            return self._observation(request)
        except DesktopUnavailable as exc:
            return Observation(
                ok=False, error=ErrorInfo(code=ErrorCode.VNC_UNAVAILABLE, message=str(exc))
            )

    # --- internals -----------------------------------------------------------

    def _observation(self, request: ObserveRequest) -> Observation:
        data, width, height = self.desktop.screenshot(
            request.format, request.quality, (request.max_width, request.max_height)
        )
        screen_w, screen_h = self.desktop.size
        return Observation(
            screen_width=screen_w,
            screen_height=screen_h,
            cursor=self.desktop.cursor,
            screenshot=Screenshot(
                format=request.format,
                width=width,
                height=height,
                data_b64=base64.b64encode(data).decode("ascii"),
            ),
        )

    async def _act(self, request: ActRequest) -> ActionResult:
        action = request.action
        started = time.perf_counter()
        try:
            width, height = await self.desktop.current_size()
            self._validate(action, width, height)
        except ActionRejected as exc:
            return _fail(action.id, exc.code, str(exc), started)
        except DesktopUnavailable as exc:
            return _fail(
                action.id, ErrorCode.VNC_UNAVAILABLE, f"{exc}; the action was not executed", started
            )

        since = time.monotonic()
        result = ActionResult(action_id=action.id)
        try:
            await self._execute(action, result)
            if request.settle and _changes_screen(action):
                quiet, expect = self._settle_profile(action)
                result.settle_ms = 1000 * await self.desktop.settle(
                    since, quiet, self.settings.settle_max, expect
                )
            if request.observe is not None:
                result.observation = self._observation(request.observe)
        except ActionRejected as exc:
            return _fail(action.id, exc.code, str(exc), started)
        except DesktopUnavailable as exc:
            # Input may have been partly delivered; say so and never replay it.
            return _fail(
                action.id,
                ErrorCode.VNC_UNAVAILABLE,
                f"VNC link failed during the action (it may have partly run; "
                f"it will not be retried): {exc}",
                started,
            )
        except SandboxNotFound as exc:
            return _fail(action.id, ErrorCode.NOT_FOUND, str(exc), started)
        except SandboxExecError as exc:
            return _fail(action.id, ErrorCode.SANDBOX_UNAVAILABLE, str(exc), started)
        result.duration_ms = (time.perf_counter() - started) * 1000
        return result

    def _validate(self, action: Action, width: int, height: int) -> None:
        def point(x: int | None, y: int | None, what: str) -> None:
            if x is None or y is None:
                raise ActionRejected(
                    ErrorCode.INVALID_ACTION,
                    f"{what} names a target but has no coordinates; ground the target first",
                )
            if not (0 <= x < width and 0 <= y < height):
                raise ActionRejected(
                    ErrorCode.OFF_SCREEN,
                    f"{what} at ({x}, {y}) is outside the {width}x{height} screen "
                    f"(x must be 0-{width - 1}, y 0-{height - 1})",
                )

        try:
            match action:
                case ClickAction() | MoveAction():
                    point(action.x, action.y, action.action)
                    if isinstance(action, ClickAction):
                        for name in action.modifiers:
                            keysym(name)
                case ScrollAction():
                    if action.x is not None or action.y is not None or action.target:
                        point(action.x, action.y, "scroll")
                case DragAction():
                    for p in action.path:
                        point(p.x, p.y, "drag")
                case KeyAction() | HoldKeyAction():
                    parse_combo(action.keys)
                case UploadFileAction():
                    try:
                        size = len(base64.b64decode(action.data_b64, validate=True))
                    except (binascii.Error, ValueError) as exc:
                        raise ActionRejected(
                            ErrorCode.INVALID_ACTION, f"data_b64 is not valid base64: {exc}"
                        ) from exc
                    if size > MAX_FILE_BYTES:
                        raise ActionRejected(
                            ErrorCode.INVALID_ACTION, f"file of {size} bytes exceeds 5 MiB"
                        )
                case LaunchAppAction():
                    if action.app.lower() not in APPS:
                        raise ActionRejected(
                            ErrorCode.INVALID_ACTION,
                            f"unknown app {action.app!r}; known: {', '.join(sorted(APPS))}",
                        )
                case DoneAction() | FailAction():
                    raise ActionRejected(
                        ErrorCode.INVALID_ACTION,
                        f"{action.action} ends a task; it is not a desktop action",
                    )
                case _:
                    pass
        except UnknownKey as exc:
            raise ActionRejected(ErrorCode.UNKNOWN_KEY, str(exc)) from exc

    def _settle_profile(self, action: Action) -> tuple[float, float]:
        quiet = self.settings.settle_quiet
        expect = self.settings.settle_expect_change
        launches = (
            isinstance(action, LaunchAppAction | OpenUrlAction)
            or (isinstance(action, ClickAction) and action.clicks >= 2)
            or (isinstance(action, KeyAction) and _launch_like_combo(action.keys))
        )
        if launches:
            # Windows map, draw a frame, then fill in: give them a longer quiet.
            return max(quiet, 0.3), expect
        return quiet, 0.0

    async def _execute(self, action: Action, result: ActionResult) -> None:
        desktop = self.desktop
        match action:
            case ClickAction():
                assert action.x is not None and action.y is not None
                mods = [keysym(m) for m in action.modifiers]
                for sym in mods:
                    await desktop.key(sym, True)
                await desktop.move(action.x, action.y)
                for _ in range(action.clicks):
                    await desktop.button(action.x, action.y, action.button, True)
                    await desktop.button(action.x, action.y, action.button, False)
                for sym in reversed(mods):
                    await desktop.key(sym, False)
            case MoveAction():
                assert action.x is not None and action.y is not None
                await desktop.move(action.x, action.y)
            case ScrollAction():
                x, y = (action.x, action.y) if action.x is not None else desktop.cursor
                assert x is not None and y is not None
                await desktop.wheel(x, y, action.direction, action.amount)
            case DragAction():
                await self._drag(action)
            case TypeAction():
                await desktop.type_text(action.text, self.settings.type_chunk_chars)
            case KeyAction():
                for chord in parse_combo(action.keys):
                    for sym in chord:
                        await desktop.key(sym, True)
                    for sym in reversed(chord):
                        await desktop.key(sym, False)
            case HoldKeyAction():
                chords = parse_combo(action.keys)
                held = [sym for chord in chords for sym in chord]
                for sym in held:
                    await desktop.key(sym, True)
                try:
                    await asyncio.sleep(action.duration)
                finally:
                    for sym in reversed(held):
                        await desktop.key(sym, False)
            case WaitAction():
                await asyncio.sleep(action.seconds)
            case ScreenshotAction():
                pass
            case CursorPositionAction():
                x, y = desktop.cursor
                result.data = {"x": x, "y": y}
            case ShellAction():
                shell = await self.sandbox.run(action.command, action.cwd, action.timeout)
                result.exit_code = shell.exit_code
                result.output = _shell_output(shell.stdout, shell.stderr, shell.truncated)
                if shell.timed_out:
                    result.ok = False
                    result.error = ErrorInfo(
                        code=ErrorCode.TIMEOUT,
                        message=f"command timed out after {action.timeout:g}s and was killed",
                    )
            case OpenUrlAction():
                await self._spawn(f"xdg-open {shlex.quote(action.url)}")
            case LaunchAppAction():
                await self._spawn(shlex.quote(APPS[action.app.lower()]))
            case UploadFileAction():
                await self.sandbox.put_file(action.path, base64.b64decode(action.data_b64))
                result.data = {"path": action.path}
            case DownloadFileAction():
                try:
                    data = await self.sandbox.get_file(action.path, MAX_FILE_BYTES)
                except FileTooLarge as exc:
                    raise ActionRejected(ErrorCode.INVALID_ACTION, str(exc)) from exc
                result.data = {"path": action.path, "data_b64": base64.b64encode(data).decode()}
            case DoneAction() | FailAction():
                raise ActionRejected(ErrorCode.INVALID_ACTION, "terminal actions are not executed")
            case _:
                assert_never(action)

    async def _drag(self, action: DragAction) -> None:
        desktop = self.desktop
        first, *rest = action.path
        await desktop.move(first.x, first.y)
        await desktop.button(first.x, first.y, action.button, True)
        previous = first
        for p in rest:
            # Intermediate points: toolkits ignore a drag that jumps in one event.
            steps = max(1, int(max(abs(p.x - previous.x), abs(p.y - previous.y)) // 20))
            for i in range(1, steps + 1):
                x = previous.x + (p.x - previous.x) * i // steps
                y = previous.y + (p.y - previous.y) * i // steps
                await desktop.drag_to(x, y, action.button)
                await asyncio.sleep(0.005)
            previous = p
        await desktop.button(previous.x, previous.y, action.button, False)

    async def _spawn(self, command: str) -> None:
        shell = await self.sandbox.run(f"setsid -f {command} >/dev/null 2>&1", None, 10.0)
        if shell.exit_code not in (0, None):
            raise ActionRejected(
                ErrorCode.INVALID_ACTION, f"could not start: {shell.stderr.strip()[:500]}"
            )


def _changes_screen(action: Action) -> bool:
    return not isinstance(
        action, ScreenshotAction | CursorPositionAction | WaitAction | DownloadFileAction
    )


def _launch_like_combo(keys: str) -> bool:
    lowered = keys.lower()
    return "+" in lowered or lowered in {"return", "enter", "kp_enter", "super"}


def _shell_output(stdout: str, stderr: str, truncated: bool) -> str:
    text = stdout if not stderr else f"{stdout}\n[stderr]\n{stderr}"
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n[... truncated, {len(text)} characters in all]"
    elif truncated:
        text += "\n[... output truncated by the sandbox]"
    return text
