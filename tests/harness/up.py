"""`selfagent up` as a person runs it: its own process group, its printed URL, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from selfagent.bus.natsd import free_port


class Up:
    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.output = workdir / f"up-{self.port}.out"
        argv = [sys.executable, "-m", "selfagent.cli", "up", f"--port={self.port}", *args]
        with self.output.open("wb") as out:
            # Its own process group, standing in for the terminal's foreground
            # group: Ctrl-C there sends SIGINT to every process in the group.
            self.process = subprocess.Popen(
                argv,
                env={**{k: v for k, v in os.environ.items() if "NATS_URL" not in k}, **env},
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_running(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "selfagent is running" not in self.text():
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.3)

    @property
    def token(self) -> str:
        found = re.search(r"\?token=(\S+)", self.text())
        assert found, self.text()
        return found.group(1)

    @property
    def data_dir(self) -> Path:
        found = re.search(r"data: (\S+)", self.text())
        assert found, self.text()
        return Path(found.group(1))

    def post(self, path: str, body: dict[str, Any], timeout: float = 120) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.port}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def ctrl_c(self, timeout: float = 60) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
