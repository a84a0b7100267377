"""Memory of one running sandbox: the native desktop and, if an engine runs, the image.

    python -m bench.sandbox_memory

Prints RSS and PSS (shared pages split between processes, so the sum is
honest) of the sandbox's processes, and the container's own usage figure.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.harness.desktop import Desktop, start_desktop


def _session_pids(leader: int) -> list[int]:
    sid = os.getsid(leader)
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def _memory_kib(pid: int) -> tuple[int, int, str]:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0, "?"
    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if ":" in line}
    return fields.get("Rss", 0), fields.get("Pss", 0), name


def native(desktop: Desktop) -> None:
    assert desktop.process is not None
    rows = [_memory_kib(pid) for pid in _session_pids(desktop.process.pid)]
    rows = [r for r in rows if r[0]]
    rss = sum(r[0] for r in rows) / 1024
    pss = sum(r[1] for r in rows) / 1024
    print(
        f"native sandbox (Xvnc + Xfce, idle, {len(rows)} processes): "
        f"RSS sum {rss:.0f} MiB, PSS sum {pss:.0f} MiB"
    )
    for rss_kib, pss_kib, name in sorted(rows, reverse=True)[:5]:
        print(f"    {name:<20} RSS {rss_kib / 1024:6.1f} MiB  PSS {pss_kib / 1024:6.1f} MiB")


def container() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        print("container: no Docker engine; skipped")
        return
    from tests.harness.container_desktop import start_container_desktop

    desktop = start_container_desktop()
    try:
        time.sleep(3)
        assert desktop.container is not None
        usage = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", desktop.container.name],
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"sandbox container (idle desktop): docker stats {usage}")
    finally:
        desktop.stop()


def main() -> None:
    desktop = start_desktop()
    try:
        time.sleep(3)
        native(desktop)
    finally:
        desktop.stop()
    container()


if __name__ == "__main__":
    main()
