"""Build the Docker images in the background while the other tests run.

Building the sandbox and service images is most of what the Docker tests
cost (minutes on a cold machine), and it is work the engine does while the
test process only waits. So when a run has Docker tests, the builds start at
collection time in one background thread, the Docker tests are moved to the
end of the run, and `build_image` waits for the prebuilt tag instead of
building it again. Everything else runs meanwhile.

The builds are confined to one CPU (`--cpuset-cpus`), so that on a two-core
machine the desktop tests running beside them keep a core of their own.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class _Build:
    dockerfile: str
    tags: tuple[str, ...]
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    seconds: float = 0.0


def _plan() -> list[_Build]:
    """The sandbox first (the earliest Docker tests need it), then each service image
    under the tag docker-compose.yml gives it, so `compose up --build` hits the cache."""
    builds = [_Build("sandbox/Dockerfile", ("selfagent/sandbox:test", "selfagent/sandbox:latest"))]
    for dockerfile in sorted((ROOT / "services").glob("*/Dockerfile")):
        service = dockerfile.parent.name
        builds.append(_Build(str(dockerfile.relative_to(ROOT)), (f"selfagent/{service}:latest",)))
    return builds


class Prebuild:
    def __init__(self) -> None:
        self.builds = _plan()
        self._thread = threading.Thread(target=self._run, name="docker-prebuild", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        cpus = os.cpu_count() or 1
        confine = ["--cpuset-cpus", str(cpus - 1)] if cpus > 1 else []
        for build in self.builds:
            started = time.monotonic()
            args = ["docker", "build", "-q", *confine, "-f", str(ROOT / build.dockerfile)]
            for tag in build.tags:
                args += ["-t", tag]
            try:
                result = subprocess.run(
                    [*args, str(ROOT)], capture_output=True, text=True, timeout=1800
                )
                if result.returncode != 0:
                    build.error = (
                        f"docker build {build.dockerfile} failed ({result.returncode}):\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                    )
            except subprocess.TimeoutExpired:
                build.error = f"docker build {build.dockerfile} took longer than 1800 s"
            build.seconds = time.monotonic() - started
            build.done.set()

    def find(self, dockerfile: str, tag: str) -> _Build | None:
        for build in self.builds:
            if build.dockerfile == dockerfile and tag in build.tags:
                return build
        return None


_active: Prebuild | None = None


def start() -> Prebuild:
    global _active
    if _active is None:
        _active = Prebuild()
        _active.start()
    return _active


def wait_for(dockerfile: str, tag: str, timeout: float) -> float | None:
    """Seconds the background build of `tag` took, once it is done; None when
    no background build covers it (the caller then builds it itself)."""
    build = _active.find(dockerfile, tag) if _active is not None else None
    if build is None:
        return None
    if not build.done.wait(timeout):
        raise TimeoutError(f"background build of {tag} not done within {timeout:.0f} s")
    if build.error is not None:
        raise RuntimeError(build.error)
    return build.seconds


def wait_all(timeout: float) -> None:
    """Wait for every background build (compose then only reuses their layers)."""
    if _active is None:
        return
    deadline = time.monotonic() + timeout
    for build in _active.builds:
        if not build.done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"background build of {build.tags[0]} not done in time")
