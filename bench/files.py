"""Files in and out of a session's desktop through the gateway: throughput and peak memory.

    python -m bench.files [--sizes 1,100]   (MiB)

Runs the real local stack (per-session desktops) and, for each size, uploads
a file of random bytes with ``POST /api/sessions/<sid>/files`` and downloads
it with ``GET .../files?path=``, checking it came back whole. Prints MiB/s
each way and the peak resident memory (VmHWM) of the gateway and the
actuator after each size. The smallest size is the baseline: peak memory
that does not grow with the file size is the goal (ratio about 1.0).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import httpx

from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from tests.harness.fakellm import FakeLLM

MIB = 1024 * 1024


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def random_file(directory: Path, size: int) -> tuple[Path, str]:
    path = directory / f"bench-{size // MIB}.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(MIB, left))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return path, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100", help="MiB, smallest first")
    args = parser.parse_args()
    sizes = [int(size) * MIB for size in args.sizes.split(",")]
    llm = FakeLLM().start()
    stack = LocalStack(
        desktops="per_session",
        gateway_port=free_port(),
        extra_env={
            "LLM_API_BASE_URL": llm.base_url,
            "LLM_MODEL": "fake-planner",
            "GROUNDER_FAMILY": "ocr",
            "PLANNER_CANARY": "false",
            "GROUNDER_CANARY": "false",
            "GATEWAY_MAX_UPLOAD_BYTES": str(max(sizes) + MIB),
        },
    )
    stack.start()
    headers = {"Authorization": f"Bearer {stack.token}"}
    try:
        with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=300) as client:
            sid = client.post("/api/sessions").raise_for_status().json()["session_id"]
            gateway, actuator = stack.processes["gateway"].pid, stack.processes["actuator"].pid
            before = f"gateway peak {peak_mib(gateway):.1f} MiB, actuator {peak_mib(actuator):.1f}"
            print(f"before: {before} MiB")
            print("  size    up MiB/s  down MiB/s  gateway peak  actuator peak")
            base: float | None = None
            with tempfile.TemporaryDirectory(prefix="selfagent-bench-") as work:
                for size in sizes:
                    path, digest = random_file(Path(work), size)
                    started = time.perf_counter()
                    with path.open("rb") as body:
                        client.post(
                            f"/api/sessions/{sid}/files", files={"files": (path.name, body)}
                        ).raise_for_status()
                    up = size / MIB / (time.perf_counter() - started)
                    started = time.perf_counter()
                    got = hashlib.sha256()
                    with client.stream(
                        "GET", f"/api/sessions/{sid}/files", params={"path": f"Uploads/{path.name}"}
                    ) as response:
                        response.raise_for_status()
                        for chunk in response.iter_bytes(MIB):
                            got.update(chunk)
                    down = size / MIB / (time.perf_counter() - started)
                    if got.hexdigest() != digest:
                        raise RuntimeError(f"{path.name} came back different")
                    peak = peak_mib(gateway)
                    base = base or peak
                    print(
                        f"  {size // MIB:4d} MiB  {up:8.1f}  {down:10.1f}  {peak:8.1f} MiB"
                        f" ({peak / base:.2f}x)  {peak_mib(actuator):8.1f} MiB"
                    )
                    path.unlink()
            client.delete(f"/api/sessions/{sid}")
    finally:
        stack.stop(remove=True)
        llm.stop()


if __name__ == "__main__":
    main()
