"""``selfagent run``, ``sessions`` and ``stop`` as a person or a script runs them.

The command runs as a process against the real gateway (served in this test
process) on the real nats-server; the test plays the planner, taking the
submitted task off the bus and publishing its events there, as any planner
would. What is checked is what the command prints, live and as ``--json``,
and its exit code for each outcome.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faststream.nats import NatsBroker
from PIL import Image

from selfagent.bus import screens, sessions
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.cli_run import (
    EXIT_CANNOT_CONNECT,
    EXIT_FAILED,
    EXIT_NEEDS_USER,
    EXIT_NOT_FOUND,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
    EXIT_TOKEN,
)
from selfagent.gateway.tests.helpers import Subscription
from selfagent.gateway.tests.inprocess import Served, serve, settings
from selfagent.schemas import (
    AgentMessage,
    ClickAction,
    ControlCommand,
    Screenshot,
    SessionState,
    ShellAction,
    StepExecuted,
    StepGrounded,
    StepPlanned,
    TaskFinished,
    TaskStarted,
    TaskStateChanged,
    TaskSubmitted,
    subjects,
)
from selfagent.schemas.messages import ErrorCode, ErrorInfo, TaskStatus

ELAPSED = re.compile(r"\d+\.\d s")
LINE_WAIT = 20.0


@pytest.fixture(scope="module")
async def served(nats_server: EmbeddedNats) -> AsyncIterator[Served]:
    async with serve(settings(nats_server.url)) as running:
        yield running


@pytest.fixture(scope="module")
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(nats_server.url)
    await broker.connect()
    yield broker
    await broker.stop()


@dataclass
class Cli:
    """One ``selfagent`` process; its stdout read line by line as it comes."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), LINE_WAIT)
        if not raw:
            raise AssertionError(f"the command ended; it printed {self.lines}")
        text = raw.decode().rstrip("\n")
        self.lines.append(text)
        return text

    async def until(self, needle: str) -> str:
        while needle not in (text := await self.line()):
            pass
        return text

    async def finish(self) -> tuple[int, str, str]:
        stdout, stderr = await asyncio.wait_for(self.process.communicate(), LINE_WAIT)
        self.lines += stdout.decode().splitlines()
        assert self.process.returncode is not None
        return self.process.returncode, "\n".join(self.lines), stderr.decode()


def _env(token: str | None, home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SELFAGENT_TOKEN", "SELFAGENT_URL", "GATEWAY_PORT")
    }
    # No token file of a real `selfagent up` on this machine may be found.
    env["XDG_DATA_HOME"] = str(home / "data")
    env["COLUMNS"] = "200"
    if token is not None:
        env["SELFAGENT_TOKEN"] = token
    return {**env, **extra}


async def start(
    served: Served | None,
    args: Sequence[str],
    home: Path,
    *,
    token: str | None = None,
    url: str | None = None,
    **extra_env: str,
) -> Cli:
    if served is not None:
        url = url or served.url
        token = token if token is not None else served.token
    argv = [sys.executable, "-m", "selfagent.cli", *args]
    if url is not None:
        argv += ["--url", url]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(token, home, **extra_env),
        cwd=home,
    )
    return Cli(process)


async def run_cli(
    served: Served | None, args: Sequence[str], home: Path, **kw: str
) -> tuple[int, str, str]:
    return await (await start(served, args, home, **kw)).finish()


@dataclass
class Planner:
    """Plays the planner: the task the gateway submits, and events for it on the bus."""

    broker: NatsBroker
    submitted: Subscription

    async def task(self) -> TaskSubmitted:
        return TaskSubmitted.model_validate_json(await self.submitted.next(LINE_WAIT))

    async def record(self, task: TaskSubmitted, **changes: object) -> None:
        """The session's record, as a planner writes it at start and after each step."""
        state = SessionState.fresh(task).model_copy(update=changes)
        await sessions.ensure_bucket(self.broker)
        bucket = await sessions.open_bucket(self.broker)
        await bucket.put(task.session_id, state.model_dump_json().encode())

    async def emit(self, *events: object) -> None:
        for event in events:
            kind = event.kind  # type: ignore[attr-defined]
            await self.broker.publish(event, subjects.session_event(event.session_id, kind))  # type: ignore[attr-defined]


@pytest.fixture
async def planner(bus: NatsBroker) -> AsyncIterator[Planner]:
    async with Subscription(bus, subjects.TASK_SUBMIT) as submitted:
        yield Planner(bus, submitted)


def _click(task: TaskSubmitted) -> list[object]:
    click = ClickAction(target="the Terminal icon in the dock")
    return [
        TaskStarted(session_id=task.session_id, task_id=task.task_id, prompt=task.prompt),
        StepPlanned(session_id=task.session_id, task_id=task.task_id, step=1, action=click),
        StepGrounded(
            session_id=task.session_id,
            task_id=task.task_id,
            step=1,
            target=click.target or "",
            x=31,
            y=702,
            method="ocr",
        ),
        StepExecuted(
            session_id=task.session_id, task_id=task.task_id, step=1, action=click, ok=True
        ),
    ]


def _finished(
    task: TaskSubmitted, status: TaskStatus, reply: str, steps: int, error: ErrorInfo | None = None
) -> TaskFinished:
    return TaskFinished(
        session_id=task.session_id,
        task_id=task.task_id,
        status=status,
        reply=reply,
        steps=steps,
        error=error,
    )


async def test_run_follows_the_task_live_and_exits_0(
    served: Served, planner: Planner, tmp_path: Path
) -> None:
    cli = await start(served, ["run", "open a terminal and run uname -a"], tmp_path)
    task = await planner.task()
    assert task.prompt == "open a terminal and run uname -a"
    # Another session's task ends first: not this command's business.
    other = TaskSubmitted(prompt="elsewhere")
    await planner.emit(_finished(other, "failed", "not mine", 0))
    await planner.emit(*_click(task))

    step = await cli.until("step 1")
    # Step number, action, target (as grounded) and elapsed time, while the task still runs.
    assert "click" in step and "'the Terminal icon in the dock' at (31, 702)" in step, step
    assert ELAPSED.search(step), step

    shell = ShellAction(command="uname -a")
    await planner.emit(
        StepPlanned(session_id=task.session_id, task_id=task.task_id, step=2, action=shell),
        StepExecuted(
            session_id=task.session_id,
            task_id=task.task_id,
            step=2,
            action=shell,
            ok=True,
            output="Linux sandbox 6.1.0",
        ),
    )
    step = await cli.until("step 2")
    assert "shell" in step and "$ uname -a" in step, step
    assert "Linux sandbox 6.1.0" in await cli.line()

    await planner.emit(
        AgentMessage(session_id=task.session_id, task_id=task.task_id, text="It runs Linux [6.1]."),
        _finished(task, "succeeded", "Linux sandbox 6.1.0", 2),
    )
    code, out, err = await cli.finish()
    assert code == EXIT_SUCCEEDED, (out, err)
    assert "agent: It runs Linux [6.1]." in out  # text, never taken as markup
    assert "succeeded after 2 steps" in out
    assert out.rstrip().endswith("Linux sandbox 6.1.0")
    assert "not mine" not in out
    assert task.session_id in out and task.task_id in out


async def test_run_json_is_one_object_per_line(
    served: Served, planner: Planner, tmp_path: Path
) -> None:
    cli = await start(served, ["run", "--json", "--max-steps", "7", "click the terminal"], tmp_path)
    task = await planner.task()
    assert task.max_steps == 7
    await planner.emit(*_click(task))
    await planner.emit(
        _finished(
            task,
            "failed",
            "I could not find it.",
            1,
            error=ErrorInfo(code=ErrorCode.NOT_FOUND, message="no terminal icon"),
        )
    )
    code, out, err = await cli.finish()
    assert code == EXIT_FAILED, (out, err)
    objects = [json.loads(line) for line in out.splitlines()]
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "cli.accepted",
        "task.started",
        "step.planned",
        "step.grounded",
        "step.executed",
        "task.finished",
        "cli.result",
    ]
    assert objects[0] == {
        "kind": "cli.accepted",
        "task_id": task.task_id,
        "session_id": task.session_id,
    }
    assert objects[2]["action"]["target"] == "the Terminal icon in the dock"
    assert objects[-1] == {
        "kind": "cli.result",
        "task_id": task.task_id,
        "session_id": task.session_id,
        "status": "failed",
        "reply": "I could not find it.",
        "steps": 1,
        "error": "no terminal icon",
        "question": None,
        "exit_code": EXIT_FAILED,
    }


async def test_run_in_a_session_that_needs_you_exits_4(
    served: Served, planner: Planner, tmp_path: Path
) -> None:
    # A first task makes the session; the second continues it.
    first = await start(served, ["run", "--json", "start"], tmp_path)
    task = await planner.task()
    await planner.emit(_finished(task, "succeeded", "ok", 0))
    assert (await first.finish())[0] == EXIT_SUCCEEDED

    cli = await start(served, ["run", "--session", task.session_id, "log in"], tmp_path)
    second = await planner.task()
    assert second.session_id == task.session_id and second.task_id != task.task_id
    await planner.emit(
        TaskStateChanged(
            session_id=second.session_id,
            task_id=second.task_id,
            state="needs_user",
            question="Which account should I use?",
        )
    )
    code, out, err = await cli.finish()
    assert code == EXIT_NEEDS_USER, (out, err)
    assert "Which account should I use?" in out


async def test_stop_ends_a_running_task_and_run_exits_3(
    served: Served, planner: Planner, bus: NatsBroker, tmp_path: Path
) -> None:
    cli = await start(served, ["run", "count to a million"], tmp_path)
    task = await planner.task()
    await planner.record(task, steps=1)
    await planner.emit(*_click(task))
    await cli.until("step 1")

    code, out, _ = await run_cli(served, ["sessions"], tmp_path)
    assert code == EXIT_SUCCEEDED
    (row,) = [line for line in out.splitlines() if task.session_id in line]
    assert "count to a million" in row and "running" in row, row

    code, out, _ = await run_cli(served, ["sessions", "--json"], tmp_path)
    listing = json.loads(out)
    assert task.session_id in [s["session_id"] for s in listing["sessions"]]

    async with Subscription(bus, subjects.session_control(task.session_id)) as control:
        code, out, err = await run_cli(served, ["stop", task.session_id], tmp_path)
        assert code == EXIT_SUCCEEDED, (out, err)
        assert f"stop sent to session {task.session_id} (it was running)" in out
        command = ControlCommand.model_validate_json(await control.next())
    assert command.command == "stop"
    await planner.emit(_finished(task, "stopped", "Stopped by you.", 1))
    code, out, err = await cli.finish()
    assert code == EXIT_STOPPED, (out, err)
    assert "stopped after 1 steps" in out


async def test_ctrl_c_stops_the_task(
    served: Served, planner: Planner, bus: NatsBroker, tmp_path: Path
) -> None:
    cli = await start(served, ["run", "wait forever"], tmp_path)
    task = await planner.task()
    await planner.emit(*_click(task))
    await cli.until("step 1")
    async with Subscription(bus, subjects.session_control(task.session_id)) as control:
        cli.process.send_signal(signal.SIGINT)
        command = ControlCommand.model_validate_json(await control.next())
    assert command.command == "stop"
    await planner.emit(_finished(task, "stopped", "Stopped.", 1))
    code, out, err = await cli.finish()
    assert code == EXIT_STOPPED, (out, err)
    assert "Ctrl-C again leaves it running" in out


async def test_unknown_sessions_exit_7(served: Served, tmp_path: Path) -> None:
    missing = "no-such-" + uuid.uuid4().hex[:8]
    for args in (
        ["stop", missing],
        ["stop", "--close", missing],
        ["run", "--session", missing, "hi"],
        ["export", missing],
    ):
        code, out, err = await run_cli(served, args, tmp_path)
        assert code == EXIT_NOT_FOUND, (args, out, err)
        assert f"no session {missing!r}" in err


async def test_export_saves_the_sessions_trajectory(
    served: Served, planner: Planner, bus: NatsBroker, tmp_path: Path
) -> None:
    task = TaskSubmitted(prompt="open a terminal")
    await planner.record(task, status="succeeded", steps=1)
    # What a planner keeps of the step: its screenshots and its model call.
    await screens.ensure_stream(bus, 3600, 64 * 1024 * 1024)
    pictures = {}
    for when, colour in (("before", "red"), ("after", "blue")):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 40), colour).save(buffer, "JPEG")
        pictures[when] = buffer.getvalue()
        encoded = base64.b64encode(buffer.getvalue()).decode()
        shot = Screenshot(format="jpeg", width=64, height=40, data_b64=encoded)
        await screens.store(bus, task.session_id, task.task_id, 1, when, shot)
    await screens.store_model_call(
        bus,
        task.session_id,
        task.task_id,
        1,
        {"messages": [{"role": "user", "content": "step://1/before"}], "reply": {"content": "ok"}},
    )
    await planner.emit(*_click(task), _finished(task, "succeeded", "Opened.", 1))
    out = tmp_path / "trip.zip"
    code, text, err = await run_cli(
        served, ["export", task.session_id, "-o", str(out), "--json"], tmp_path
    )
    assert code == EXIT_SUCCEEDED, err
    assert json.loads(text.splitlines()[-1]) == {"path": str(out), "steps": 1, "images": 2}
    with zipfile.ZipFile(out) as archive:
        (line,) = archive.read("steps.jsonl").decode().splitlines()
        step = json.loads(line)
        assert step["instruction"] == "open a terminal" and step["task_status"] == "succeeded"
        assert step["grounding"] == {
            "target": "the Terminal icon in the dock", "x": 31, "y": 702, "method": "ocr"
        }
        assert step["result"]["ok"] is True
        assert archive.read(step["images"]["before"]) == pictures["before"]
        assert archive.read(step["images"]["after"]) == pictures["after"]
        # The model call's screenshot reference became the image's path in the zip.
        assert step["model"]["messages"][0]["content"] == step["images"]["before"]
        assert step["model"]["reply"] == {"content": "ok"}
    assert not (tmp_path / "trip.zip.part").exists()


async def test_token_refused_or_missing_exits_6(served: Served, tmp_path: Path) -> None:
    code, _, err = await run_cli(served, ["sessions"], tmp_path, token="not-" + served.token)
    assert code == EXIT_TOKEN
    assert "refused the token" in err
    code, _, err = await run_cli(served, ["run", "hi"], tmp_path, token="not-" + served.token)
    assert code == EXIT_TOKEN, err
    code, _, err = await run_cli(None, ["sessions"], tmp_path, url=served.url)
    assert code == EXIT_TOKEN
    assert "no token" in err


async def test_the_token_is_found_in_dotenv_and_the_data_dir(
    served: Served, tmp_path: Path
) -> None:
    # `selfagent up` keeps its token in the data directory.
    data = tmp_path / "data" / "selfagent"
    data.mkdir(parents=True)
    (data / "token").write_text(served.token + "\n")
    code, _, err = await run_cli(None, ["sessions"], tmp_path, url=served.url)
    assert code == EXIT_SUCCEEDED, err
    # Compose keeps it in .env, which wins over the data directory.
    (data / "token").write_text("stale\n")
    (tmp_path / ".env").write_text(f"SELFAGENT_TOKEN={served.token}\n")
    code, _, err = await run_cli(None, ["sessions"], tmp_path, url=served.url)
    assert code == EXIT_SUCCEEDED, err
    (tmp_path / ".env").write_text("SELFAGENT_TOKEN=stale\n")
    code, _, err = await run_cli(None, ["sessions"], tmp_path, url=served.url)
    assert code == EXIT_TOKEN, err


async def test_no_gateway_exits_5(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["run", "hi"], ["sessions"], ["stop", "abc"]):
        code, _, err = await run_cli(None, args, tmp_path, token="t" * 32, url=url)
        assert code == EXIT_CANNOT_CONNECT, (args, err)
        assert url in err


async def test_run_survives_a_gateway_restart_and_shows_each_event_once(
    nats_server: EmbeddedNats, planner: Planner, tmp_path: Path
) -> None:
    config = settings(nats_server.url)
    async with serve(config) as first:
        cli = await start(first, ["run", "survive a restart"], tmp_path)
        task = await planner.task()
        await planner.emit(*_click(task))
        await cli.until("step 1")
    # While no gateway runs, the task goes on; its events are kept in the stream.
    shell = ShellAction(command="echo still here")
    await planner.emit(
        StepPlanned(session_id=task.session_id, task_id=task.task_id, step=2, action=shell),
        StepExecuted(
            session_id=task.session_id, task_id=task.task_id, step=2, action=shell, ok=True
        ),
        _finished(task, "succeeded", "Still here.", 2),
    )
    async with serve(config):
        code, out, err = await cli.finish()
    assert code == EXIT_SUCCEEDED, (out, err)
    assert "reconnecting" in out
    assert sum("step 1" in line for line in out.splitlines()) == 1
    assert sum("step 2" in line for line in out.splitlines()) == 1
    assert out.rstrip().endswith("Still here.")
