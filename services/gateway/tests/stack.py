"""Start the real gateway (``python -m selfagent.gateway``) as a process for tests."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from selfagent.bus.natsd import free_port


@dataclass
class GatewayProcess:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


def start_gateway(
    nats_url: str,
    vnc_port: int,
    vnc_password: str,
    *,
    token: str | None = None,
    wait_for_nats: bool = True,
    **extra_env: str,
) -> GatewayProcess:
    port = free_port()
    token = token or secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "SELFAGENT_TOKEN": token,
        "NATS_URL": nats_url,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_VNC_HOST": "127.0.0.1",
        "GATEWAY_VNC_PORT": str(vnc_port),
        "GATEWAY_VNC_PASSWORD": vnc_password,
        **extra_env,
    }
    fd, log_name = tempfile.mkstemp(prefix="selfagent-gateway-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "selfagent.gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", token, process, Path(log_name), env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        try:
            status = httpx.get(f"{gateway.url}/healthz", timeout=1).status_code
            if status == 200 or (status == 503 and not wait_for_nats):
                return gateway
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    gateway.stop()
    raise TimeoutError(f"gateway did not become healthy:\n{gateway.log()}")
