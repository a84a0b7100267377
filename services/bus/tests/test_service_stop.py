"""A service told to stop after NATS went away exits cleanly: no traceback, no ERROR line.

Real service processes on a real nats-server. The actuator is left out: it
needs a desktop before it touches the bus, and the local-stack stop test
covers it with the other three.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port

READY = {
    "planner": "planner ready",
    "grounder": "grounder ready",
    "gateway": "connected to NATS at",
}


def _wait_for(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"no {text!r} in the log:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.parametrize("service", sorted(READY))
def test_stop_after_nats_is_gone_is_clean(tmp_path: Path, service: str) -> None:
    nats = EmbeddedNats(store_dir=tmp_path / "nats").start()
    env = {
        **{k: v for k, v in os.environ.items() if "NATS_URL" not in k},
        "NATS_URL": nats.url,
        "LLM_API_BASE_URL": "http://127.0.0.1:9/v1",
        "GROUNDER_FAMILY": "ocr",
        "GROUNDER_CANARY": "false",
        "SELFAGENT_TOKEN": secrets.token_urlsafe(24),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / f"{service}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"selfagent.{service}"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(log, READY[service], process, 60)
        nats.stop()
        # The service notices and starts reconnecting: that is the state SIGTERM meets.
        _wait_for(log, "broken (unexpected eof); reconnecting", process, 30)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        nats.cleanup()
    text = log.read_text(errors="replace")
    # uvicorn ends by re-raising the SIGTERM it handled, once shut down.
    assert code == 0 or (service == "gateway" and code == -signal.SIGTERM), text
    assert "Traceback" not in text, text
    assert not re.search(r"(?m)\b(ERROR|CRITICAL)\b", text), text
