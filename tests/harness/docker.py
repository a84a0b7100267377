"""Docker helpers for the image and compose tests: engine, builds, containers.

Tests marked `docker` need a running engine. When there is none they fail
with a clear message, unless SELFAGENT_SKIP_DOCKER=1 says to skip them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import prebuild

ROOT = Path(__file__).resolve().parents[2]
SKIP_ENV = "SELFAGENT_SKIP_DOCKER"


class DockerError(RuntimeError):
    pass


def run(
    args: Sequence[str],
    *,
    timeout: float = 120,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(args),
            capture_output=True,
            timeout=timeout,
            input=input.decode() if input is not None else None,
            text=True,
            env=env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{' '.join(args)} did not finish within {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise DockerError(
            f"{' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def engine_available() -> str | None:
    """None when an engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` hung for 20 s"
    if result.returncode != 0 or not result.stdout.strip():
        return f"no Docker engine answers: {result.stderr.strip()[:300]}"
    return None


def require_engine() -> None:
    """Fail loudly without an engine; skip only when explicitly asked to."""
    problem = engine_available()
    if problem is None:
        return
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1 and {problem}")
    pytest.fail(
        f"{problem}. Start one (e.g. the CI's docker-standin helper) or set {SKIP_ENV}=1 "
        "to skip the docker tests.",
        pytrace=False,
    )


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) when present, else the v1 `docker-compose`."""
    if run(["docker", "compose", "version"], check=False, timeout=20).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed", pytrace=False)


def build_image(dockerfile: str, tag: str, timeout: float = 1200) -> float:
    """Build from the repository root; return the seconds it took (the
    background prebuild's time when it already built this tag)."""
    prebuilt = prebuild.wait_for(dockerfile, tag, timeout)
    if prebuilt is not None:
        return prebuilt
    started = time.monotonic()
    run(
        ["docker", "build", "-q", "-f", str(ROOT / dockerfile), "-t", tag, str(ROOT)],
        timeout=timeout,
    )
    return time.monotonic() - started


def image_size(tag: str) -> int:
    return int(run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())


def image_config(tag: str) -> dict[str, object]:
    config = json.loads(
        run(["docker", "image", "inspect", "--format", "{{json .Config}}", tag]).stdout
    )
    assert isinstance(config, dict)
    return config


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Container:
    name: str

    def inspect(self, fmt: str) -> str:
        return run(["docker", "inspect", "--format", fmt, self.name]).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def health(self) -> str:
        return self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def logs(self) -> str:
        result = run(["docker", "logs", self.name], check=False)
        return result.stdout + result.stderr

    def exec(self, *cmd: str, timeout: float = 60, user: str | None = None) -> str:
        args = ["docker", "exec"] + (["--user", user] if user else []) + [self.name, *cmd]
        return run(args, timeout=timeout).stdout

    def host_port(self, container_port: int) -> int:
        out = run(["docker", "port", self.name, f"{container_port}/tcp"]).stdout
        # e.g. "127.0.0.1:49153" (one line per binding)
        return int(out.splitlines()[0].rsplit(":", 1)[1])

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            if not self.running():
                raise DockerError(f"{self.name} exited:\n{self.logs()[-3000:]}")
            status = self.health()
            if status == "healthy":
                return
            time.sleep(0.5)
        raise DockerError(
            f"{self.name} not healthy within {timeout}s ({status}):\n{self.logs()[-3000:]}"
        )

    def wait_exit(self, timeout: float = 60) -> int:
        result = run(["docker", "wait", self.name], timeout=timeout)
        return int(result.stdout.strip())

    def remove(self) -> None:
        run(["docker", "rm", "-f", "-v", self.name], check=False, timeout=60)


@contextmanager
def container(
    image: str,
    *,
    env: dict[str, str] | None = None,
    publish: Sequence[int] = (),
    args: Sequence[str] = (),
    prefix: str = "selfagent-test",
) -> Iterator[Container]:
    """Run a detached container (ports published on loopback, random host
    ports) and remove it, with its anonymous volumes, afterwards."""
    name = unique_name(prefix)
    cmd = ["docker", "run", "-d", "--name", name]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    for port in publish:
        cmd += ["-p", f"127.0.0.1::{port}"]
    cmd += [*args, image]
    handle = Container(name)
    try:
        run(cmd, timeout=60)
        yield handle
    finally:
        handle.remove()


def memory_report(handle: Container) -> str:
    """`docker stats` usage plus the RSS of the biggest processes inside."""
    stats = run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", handle.name]
    ).stdout.strip()
    ps = handle.exec("ps", "-eo", "rss=,comm=")
    rows = sorted(
        (
            (int(line.split(None, 1)[0]), line.split(None, 1)[1])
            for line in ps.splitlines()
            if line.strip()
        ),
        reverse=True,
    )
    total = sum(rss for rss, _ in rows) / 1024
    top = ", ".join(f"{name} {rss / 1024:.0f}" for rss, name in rows[:8])
    return (
        f"docker stats: {stats}; RSS sum {total:.0f} MiB over {len(rows)} processes; top MiB: {top}"
    )
