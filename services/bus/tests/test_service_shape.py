"""The one shape of every service: settings, build -> start -> stop, and the shared runner.

The runner is exercised as the services run in production: ``python -m
selfagent.<service>`` processes on a real nats-server, stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfagent.actuator.config import Settings as ActuatorSettings
from selfagent.bus import ServiceSettings, jetstream, make_broker
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.bus.settings import DEFAULT_NATS_URL
from selfagent.errors import BusUnavailable
from selfagent.gateway.config import Settings as GatewaySettings
from selfagent.grounder.config import Settings as GrounderSettings
from selfagent.grounder.service import build as build_grounder
from selfagent.planner.config import Settings as PlannerSettings
from selfagent.planner.service import build as build_planner
from selfagent.provisioner.config import Settings as ProvisionerSettings
from tests.harness.fakellm import FakeLLM

PROBE = Path(__file__).with_name("runner_probe.py")
SERVICES: dict[str, tuple[type[ServiceSettings], str]] = {
    "actuator": (ActuatorSettings, "ACTUATOR_"),
    "grounder": (GrounderSettings, "GROUNDER_"),
    "planner": (PlannerSettings, "PLANNER_"),
    "gateway": (GatewaySettings, "GATEWAY_"),
    "provisioner": (ProvisionerSettings, "PROVISIONER_"),
}


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any NATS URL or service setting of its own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "NATS_URL"
        and not key.startswith(("ACTUATOR_", "GROUNDER_", "PLANNER_"))
        and not key.startswith(("GATEWAY_", "PROVISIONER_", "SELFAGENT_", "LLM_", "PROBE_"))
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# --- settings -----------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_nats_url_precedence_is_the_same_everywhere(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_type, prefix = SERVICES[name]
    monkeypatch.chdir(tmp_path)  # no .env but the one written below
    for key in list(os.environ):
        if key == "NATS_URL" or key.startswith(prefix):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SELFAGENT_TOKEN", secrets.token_urlsafe(24))

    def url() -> str:
        return settings_type().nats_url

    assert url() == DEFAULT_NATS_URL
    (tmp_path / ".env").write_text("NATS_URL=nats://from-dotenv:4222\n")
    assert url() == "nats://from-dotenv:4222"
    monkeypatch.setenv("NATS_URL", "nats://shared:4222")
    assert url() == "nats://shared:4222"
    monkeypatch.setenv(f"{prefix}NATS_URL", "nats://own:4222")
    assert url() == "nats://own:4222"
    assert settings_type(nats_url="nats://given:4222").nats_url == "nats://given:4222"


# --- the runner, through real service processes ---------------------------------

BAD_SETTINGS = {
    "actuator": {"ACTUATOR_VNC_PORT": "not-a-port"},
    "grounder": {"GROUNDER_CONCURRENCY": "0"},
    "planner": {"PLANNER_MAX_STEPS": "0"},
    "gateway": {"SELFAGENT_TOKEN": " "},
    "provisioner": {"PROVISIONER_MAX_PER_HOST": "0"},
}


@pytest.mark.parametrize("name", SERVICES)
def test_bad_setting_is_one_line_and_exit_2(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"selfagent.{name}"],
        env=clean_env(**BAD_SETTINGS[name]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"ERROR selfagent.{name}: cannot run: invalid configuration: " in lines[0]
    setting = next(iter(BAD_SETTINGS[name])).lower().removeprefix(f"{name}_")
    assert setting in lines[0].lower()


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.popen.poll() is None, f"exited with {self.popen.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout}s:\n{self.log()}"
            time.sleep(0.1)

    def wait_for_sigterm_handler(self, timeout: float) -> None:
        """Until the process catches SIGTERM (the runner installed its handler)."""
        bit = 1 << (signal.SIGTERM - 1)
        deadline = time.monotonic() + timeout
        while True:
            assert self.popen.poll() is None, f"exited with {self.popen.returncode}:\n{self.log()}"
            status = Path(f"/proc/{self.popen.pid}/status").read_text()
            caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
            if int(caught.split()[1], 16) & bit:
                return
            assert time.monotonic() < deadline, f"no SIGTERM handler within {timeout}s"
            time.sleep(0.05)

    def terminate(self, timeout: float = 15) -> int:
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"still running {timeout}s after SIGTERM:\n{self.log()}") from None


READY = {
    "actuator": "ready for sandbox 'probe'",
    "grounder": "grounder ready",
    "planner": "planner ready",
    "provisioner": "ready: native backend, warm 0",
}


@pytest.mark.parametrize("name", READY)
def test_sigterm_stops_a_running_service_cleanly(
    name: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    env = clean_env(
        NATS_URL=nats_server.url,
        ACTUATOR_SANDBOX_ID="probe",
        ACTUATOR_VNC_PORT=str(free_port()),  # no desktop: the link retries meanwhile
        GROUNDER_FAMILY="ocr",
        GROUNDER_CANARY="false",
        # No desktop to start: the provisioner answers with an empty pool.
        PROVISIONER_BACKEND="native",
        PROVISIONER_WARM="0",
        PROVISIONER_DATA_DIR=str(tmp_path / "provisioner"),
    )
    service = Process([sys.executable, "-m", f"selfagent.{name}"], env, tmp_path / "log")
    service.wait_for(READY[name])
    assert service.terminate() == 0, service.log()
    assert f"INFO selfagent.{name}: stopped" in service.log()
    assert "Traceback" not in service.log()


def test_sigterm_while_start_waits_for_nats(tmp_path: Path) -> None:
    """Stopping must not wait for a server that never comes."""
    env = clean_env(
        NATS_URL=f"nats://127.0.0.1:{free_port()}", GROUNDER_FAMILY="ocr", LOG_LEVEL="DEBUG"
    )
    service = Process([sys.executable, "-m", "selfagent.grounder"], env, tmp_path / "log")
    # The runner's line once its signal handlers are in and start() runs;
    # a SIGTERM before it would meet Python's default handler instead.
    service.wait_for("selfagent.grounder: starting; SIGINT or SIGTERM stops the service")
    assert service.popen.poll() is None, service.log()
    assert "grounder ready" not in service.log()
    assert service.terminate(timeout=10) == 0, service.log()
    assert "INFO selfagent.grounder: stopped" in service.log()


def test_sigterm_stops_a_start_that_lost_its_cancellation(tmp_path: Path) -> None:
    """The runner asks again when start() did not take the first cancellation."""
    env = clean_env(PROBE_FAIL="deaf", LOG_LEVEL="DEBUG")
    probe = Process([sys.executable, str(PROBE)], env, tmp_path / "log")
    probe.wait_for("starting; SIGINT or SIGTERM stops the service")
    assert probe.terminate(timeout=10) == 0, probe.log()
    assert "released" in probe.log() and "stopped" in probe.log()
    assert "ready" not in probe.log()


@pytest.mark.parametrize(
    ("fail", "status", "message"),
    [
        ("auth", 2, "cannot run: nats: authorization violation"),
        ("config", 2, "cannot run: PROBE_SOMETHING must be set"),
        ("auth-later", 2, "cannot run: nats: authorization violation"),
        ("bug", 1, "stopped by an unexpected error"),
    ],
)
def test_runner_exit_status_and_release_when_start_fails(
    fail: str, status: int, message: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, str(PROBE)],
        env=clean_env(PROBE_FAIL=fail),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stderr
    # stop() released what the service had registered, also after a failed start.
    assert done.stdout.splitlines()[-1] == "released", done.stdout
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert message in errors[0], errors
    if fail == "bug":
        # A bug is the one case that deserves its traceback.
        assert "ZeroDivisionError: a bug" in done.stderr
    else:
        assert errors == [errors[0]], errors


# --- build -> start -> stop, in process -------------------------------------------


async def test_stop_is_idempotent_and_releases_broker_and_background_tasks(
    nats_server: EmbeddedNats,
) -> None:
    vlm = FakeLLM(default={"delay": 30.0, "content": "(1,1)"}).start()
    try:
        service = build_grounder(
            GrounderSettings(
                nats_url=nats_server.url,
                api_base_url=vlm.base_url,
                model="UI-TARS-1.5-7B",
                family="ui-tars-1.5",
                canary=True,  # stays in flight: the scripted model takes 30 s
            )
        )
        await service.start()
        deadline = time.monotonic() + 10
        while vlm.max_in_flight < 1:
            assert time.monotonic() < deadline, "the canary never called the model"
            await asyncio.sleep(0.05)
        assert any(t.get_name() == "grounder-canary" for t in asyncio.all_tasks())

        await asyncio.wait_for(service.stop(), 10)
        await service.stop()
        await asyncio.gather(service.stop(), service.stop())

        assert not any(t.get_name() == "grounder-canary" for t in asyncio.all_tasks())
        with pytest.raises(BusUnavailable):
            jetstream(service.broker)
    finally:
        vlm.stop()


async def test_stop_after_a_cancelled_start_releases_what_build_made() -> None:
    # A "server" that accepts the connection and never says a word: start()
    # waits on it, and the test knows when it has got that far.
    dialled = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.set()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        service = build_planner(PlannerSettings(nats_url=f"nats://127.0.0.1:{port}"))
        starting = asyncio.create_task(service.start())
        await asyncio.wait_for(dialled.wait(), 10)
        assert not starting.done()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert service.llm._client.is_closed()
        await service.stop()  # again: nothing left to release, no error
    finally:
        server.close()


async def test_jetstream_of_an_unconnected_broker_is_bus_unavailable(
    nats_server: EmbeddedNats,
) -> None:
    broker = make_broker(nats_server.url, "shape-test")
    with pytest.raises(BusUnavailable):
        jetstream(broker)
    await broker.start()
    try:
        js = jetstream(broker)
        await js.add_stream(name="SHAPE_TEST", subjects=["shape.test"])
        await js.publish("shape.test", b"kept")
        assert (await js.get_last_msg("SHAPE_TEST", "shape.test")).data == b"kept"
        await js.delete_stream("SHAPE_TEST")
    finally:
        await broker.stop()
