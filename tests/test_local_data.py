"""`selfagent up` keeps the agent's files, the history and the token; --ephemeral keeps nothing."""

from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.api import computer
from tests.harness.fakellm import FakeLLM
from tests.harness.up import Up

pytestmark = pytest.mark.desktop


def _env(llm: FakeLLM, xdg: Path) -> dict[str, str]:
    return {
        "LLM_API_BASE_URL": llm.base_url,
        "LLM_MODEL": "fake-planner",
        "GROUNDER_FAMILY": "ocr",
        "GROUNDER_CANARY": "false",
        "PLANNER_CANARY": "false",
        "XDG_DATA_HOME": str(xdg),
        "PROVISIONER_HOST_NAME": f"data-{uuid.uuid4().hex[:8]}",
        "PYTHONUNBUFFERED": "1",
    }


def _finished_output(up: Up, session_id: str, tasks: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while True:
        events = up.get(f"/api/sessions/{session_id}/events").json()["events"]
        if sum(1 for e in events if e["kind"] == "task.finished") >= tasks:
            return events
        assert time.monotonic() < deadline, events[-3:]
        time.sleep(0.3)


def test_files_history_and_token_survive_a_restart(tmp_path: Path, llm: FakeLLM) -> None:
    xdg = tmp_path / "xdg"
    env = _env(llm, xdg)
    first = Up(tmp_path, env)
    try:
        first.wait_running()
        assert first.data_dir == xdg / "selfagent"
        llm.push(
            computer(action="shell", command="echo made before > ~/kept.txt"),
            computer(action="done", message="saved"),
        )
        reply = first.post("/api/chat", {"prompt": "save a note"})
        assert reply.status_code == 200 and reply.json()["status"] == "succeeded", reply.text
        session = reply.json()["session_id"]
        token = first.token
        assert first.ctrl_c() == 0, first.text()
    finally:
        first.kill()
    stored = xdg / "selfagent" / "token"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE((xdg / "selfagent").stat().st_mode) == 0o700

    second = Up(tmp_path, env)
    try:
        second.wait_running()
        assert second.token == token, "the token changed across a restart"
        # The session and its history are still there, and its next task
        # finds the file in the same home, on a new desktop.
        assert second.get(f"/api/sessions/{session}").json()["status"] == "succeeded"
        llm.push(
            computer(action="shell", command="cat ~/kept.txt"),
            computer(action="done", message="found"),
        )
        accepted = second.post("/api/tasks", {"prompt": "read the note", "session_id": session})
        assert accepted.status_code == 202, accepted.text
        events = _finished_output(second, session, tasks=2)
        outputs = [e["output"] for e in events if e["kind"] == "step.executed"]
        assert outputs[-1].strip() == "made before", outputs
        assert second.ctrl_c() == 0, second.text()
    finally:
        second.kill()


def test_ephemeral_leaves_nothing_behind(tmp_path: Path, llm: FakeLLM) -> None:
    xdg = tmp_path / "xdg"
    up = Up(tmp_path, _env(llm, xdg), "--ephemeral")
    try:
        up.wait_running()
        data = up.data_dir
        assert data.is_dir() and "(deleted at exit" in up.text()
        llm.push(
            computer(action="shell", command="echo gone > ~/gone.txt"),
            computer(action="done", message="ok"),
        )
        reply = up.post("/api/chat", {"prompt": "write something"})
        assert reply.status_code == 200 and reply.json()["status"] == "succeeded", reply.text
        assert up.ctrl_c() == 0, up.text()
    finally:
        up.kill()
    assert not data.exists(), sorted(str(p) for p in data.rglob("*"))[:20]
    assert not xdg.exists()
