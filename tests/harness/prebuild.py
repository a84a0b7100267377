"""Build the Docker images in the background while the other tests run.

Building the sandbox and service images is most of what the Docker tests
cost (minutes on a cold machine), and it is work the engine does while the
test processes only wait. So the first test process that collects a Docker
test starts one builder process (`python -m tests.harness.prebuild DIR`),
and `build_image` then waits for the prebuilt tag instead of building it
again. With pytest-xdist the Docker tests form one group on one worker,
which waits while the other workers run everything else; without xdist
they run last.

The builder writes one status file per image into DIR (shared by the test
processes through SELFAGENT_PREBUILD_DIR). Its builds are confined to one
CPU (`--cpuset-cpus`), so that on a two-core machine the desktop tests
running beside them keep a core of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIR_ENV = "SELFAGENT_PREBUILD_DIR"
BUILD_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Image:
    dockerfile: str
    tags: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.tags[0].replace("/", "_").replace(":", "_")


def plan() -> list[Image]:
    """The sandbox first (the earliest Docker tests need it), then each service
    image under the tag docker-compose.yml gives it, so `compose up --build`
    only reuses their layers."""
    images = [Image("sandbox/Dockerfile", ("selfagent/sandbox:test", "selfagent/sandbox:latest"))]
    for dockerfile in sorted((ROOT / "services").glob("*/Dockerfile")):
        tag = f"selfagent/{dockerfile.parent.name}:latest"
        images.append(Image(str(dockerfile.relative_to(ROOT)), (tag,)))
    return images


def _directory() -> Path | None:
    value = os.environ.get(DIR_ENV)
    return Path(value) if value else None


def ensure_started() -> None:
    """Start the builder once per test run, whichever test process asks first."""
    directory = _directory()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of all the xdist workers, exactly one starts the builder.
        fd = os.open(directory / "started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    log = open(directory / "builder.log", "wb")  # noqa: SIM115 (the child owns it)
    builder = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.prebuild", str(directory)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    os.write(fd, str(builder.pid).encode())
    os.close(fd)


def record_docker_tests(nodeids: list[str]) -> None:
    """Written by each xdist worker after collection (they all collect the same)."""
    directory = _directory()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"docker-tests.{os.getpid()}"
    partial.write_text("\n".join(nodeids))
    partial.rename(directory / "docker-tests")


_docker_tests: frozenset[str] | None = None


def docker_tests() -> frozenset[str]:
    """The node ids of the Docker tests, as the workers recorded them."""
    global _docker_tests
    if _docker_tests is None:
        directory = _directory()
        path = directory / "docker-tests" if directory is not None else None
        if path is None or not path.exists():
            return frozenset()
        _docker_tests = frozenset(path.read_text().splitlines())
    return _docker_tests


def stop_builder() -> None:
    """At the end of the run: a builder still running has nobody left to serve."""
    directory = _directory()
    if directory is None or not (directory / "started").exists():
        return
    try:
        pid = int((directory / "started").read_text() or 0)
        if pid:
            os.killpg(pid, 15)
    except (ValueError, ProcessLookupError, PermissionError):
        pass


def _status(directory: Path, image: Image) -> dict[str, object] | None:
    path = directory / f"{image.key}.json"
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _wait(directory: Path, image: Image, deadline: float) -> float:
    while True:
        status = _status(directory, image)
        if status is not None:
            if status.get("error"):
                raise RuntimeError(str(status["error"]))
            return float(status.get("seconds", 0.0))  # type: ignore[arg-type]
        if not (directory / "started").exists():
            raise RuntimeError("the background image builder was never started")
        if time.monotonic() > deadline:
            raise TimeoutError(f"background build of {image.tags[0]} not done in time")
        time.sleep(0.5)


def wait_for(dockerfile: str, tag: str, timeout: float) -> float | None:
    """Seconds the background build of `tag` took, once it is done; None when
    no background build covers it (the caller then builds it itself)."""
    directory = _directory()
    if directory is None or not (directory / "started").exists():
        return None
    for image in plan():
        if image.dockerfile == dockerfile and tag in image.tags:
            return _wait(directory, image, time.monotonic() + timeout)
    return None


def wait_all(timeout: float = BUILD_TIMEOUT) -> None:
    """Wait for every background build, if there is a builder this run."""
    directory = _directory()
    if directory is None or not (directory / "started").exists():
        return
    deadline = time.monotonic() + timeout
    for image in plan():
        _wait(directory, image, deadline)


def _build_all(directory: Path) -> None:
    cpus = os.cpu_count() or 1
    confine = ["--cpuset-cpus", str(cpus - 1)] if cpus > 1 else []
    for image in plan():
        started = time.monotonic()
        args = ["docker", "build", "-q", *confine, "-f", str(ROOT / image.dockerfile)]
        for tag in image.tags:
            args += ["-t", tag]
        error = ""
        try:
            result = subprocess.run(
                [*args, str(ROOT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT
            )
            if result.returncode != 0:
                error = (
                    f"docker build {image.dockerfile} failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
        except subprocess.TimeoutExpired:
            error = f"docker build {image.dockerfile} took longer than {BUILD_TIMEOUT:.0f} s"
        seconds = time.monotonic() - started
        print(f"{image.tags[0]}: {seconds:.1f} s {'FAILED' if error else 'ok'}", flush=True)
        partial = directory / f"{image.key}.json.part"
        partial.write_text(json.dumps({"seconds": seconds, "error": error}))
        partial.rename(directory / f"{image.key}.json")


if __name__ == "__main__":
    _build_all(Path(sys.argv[1]))
