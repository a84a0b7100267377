"""Ctrl-C on `selfagent up` stops everything cleanly: no traceback or ERROR in any log."""

from __future__ import annotations

import re
import secrets
import uuid
from pathlib import Path

import pytest

from selfagent.local import SESSION_SERVICES
from selfagent.provisioner.native import marked_processes
from tests.harness.api import computer
from tests.harness.fakellm import FakeLLM
from tests.harness.up import Up

pytestmark = pytest.mark.desktop


def _processes_naming(text: str) -> list[str]:
    """Command lines of running processes that mention ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_ctrl_c_stops_services_before_nats(tmp_path: Path, llm: FakeLLM) -> None:
    host = f"stop-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    env = {
        "LLM_API_BASE_URL": llm.base_url,
        "LLM_MODEL": "fake-planner",
        "LLM_API_KEY": "sk-test",
        "GROUNDER_FAMILY": "ocr",
        "GROUNDER_CANARY": "false",
        "PLANNER_CANARY": "false",
        "SELFAGENT_TOKEN": "stop-token-" + secrets.token_urlsafe(24),
        # Names this run's desktops, to find any left behind.
        "PROVISIONER_HOST_NAME": host,
        "PYTHONUNBUFFERED": "1",
    }
    up = Up(tmp_path, env, f"--data-dir={data}")
    try:
        up.wait_running()
        # One task through every service, so each has bus traffic to drain.
        llm.push(computer(action="done", message="Nothing to do."))
        reply = up.post("/api/chat", {"prompt": "say done"})
        assert reply.status_code == 200 and reply.json()["status"] == "succeeded", reply.text
        assert up.ctrl_c() == 0, up.text()
    finally:
        up.kill()

    # `selfagent up` runs per-session desktops: the provisioner is one of them.
    for name in SESSION_SERVICES:
        log = (data / "logs" / f"{name}.log").read_text(errors="replace")
        assert log, f"{name} logged nothing"
        assert "Traceback" not in log, f"{name}:\n{log}"
        assert not re.search(r"(?m)\b(ERROR|CRITICAL)\b", log), f"{name}:\n{log}"
        # NATS was still there while the service drained (it stops last).
        assert "NATS connection" not in log, f"{name}:\n{log}"
    # Nothing it started is left: the embedded NATS names the data directory.
    assert not _processes_naming(str(data)), _processes_naming(str(data))
    # No desktop either: neither the one the task ran on nor the warm one.
    assert not marked_processes(host), marked_processes(host)
