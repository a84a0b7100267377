"""Ctrl-C on `selfagent up` stops everything cleanly: no traceback or ERROR in any log."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from selfagent.bus.natsd import free_port
from selfagent.local import SESSION_SERVICES
from selfagent.provisioner.native import marked_processes
from tests.harness.api import computer
from tests.harness.fakellm import FakeLLM

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
    port = free_port()
    token = "stop-token-" + secrets.token_urlsafe(24)
    host = f"stop-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if "NATS_URL" not in k},
        "LLM_API_BASE_URL": llm.base_url,
        "LLM_MODEL": "fake-planner",
        "LLM_API_KEY": "sk-test",
        "GROUNDER_FAMILY": "ocr",
        "GROUNDER_CANARY": "false",
        "PLANNER_CANARY": "false",
        "SELFAGENT_TOKEN": token,
        # Names this run's desktops, to find any left behind.
        "PROVISIONER_HOST_NAME": host,
        "PYTHONUNBUFFERED": "1",
    }
    output = tmp_path / "up.out"
    argv = [sys.executable, "-m", "selfagent.cli", "up", f"--port={port}", f"--data-dir={data}"]
    with output.open("wb") as out:
        # Its own process group, standing in for the terminal's foreground
        # group: Ctrl-C there sends SIGINT to every process in the group.
        up = subprocess.Popen(
            argv,
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "selfagent is running" not in output.read_text(errors="replace"):
            assert up.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.3)
        # One task through every service, so each has bus traffic to drain.
        llm.push(computer(action="done", message="Nothing to do."))
        reply = httpx.post(
            f"http://127.0.0.1:{port}/api/chat",
            json={"prompt": "say done"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        assert reply.status_code == 200 and reply.json()["status"] == "succeeded", reply.text

        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(60) == 0, output.read_text(errors="replace")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()

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
