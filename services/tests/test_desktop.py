"""Display numbers are claimed so that processes starting desktops at once
(test workers, a provisioner's pool) never share one, and a claim dies with
its process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from selfagent.desktop import free_display, release_display

FIRST = 200  # far above the numbers local mode and the tests' desktops climb to

HOLDER = textwrap.dedent(
    f"""
    import sys, time
    from selfagent.desktop import free_display
    sys.stdin.readline()                  # all start claiming at the same moment
    print(free_display({FIRST}), flush=True)
    sys.stdin.readline()                  # hold it until told to go
    """
)


def _holders(count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]


def test_processes_claiming_at_once_get_different_numbers() -> None:
    holders = _holders(8)
    try:
        for holder in holders:
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
        numbers = []
        for holder in holders:
            assert holder.stdout is not None
            numbers.append(int(holder.stdout.readline()))
        assert len(set(numbers)) == len(numbers), numbers
        # While they hold theirs, this process gets yet another one.
        mine = free_display(FIRST)
        assert mine not in numbers
        release_display(mine)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_claim_ends_with_its_process_and_with_release() -> None:
    (holder,) = _holders(1)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    held = int(holder.stdout.readline())
    other = free_display(FIRST)
    assert other != held, "taken while its holder lives"
    release_display(other)
    holder.kill()
    holder.wait()
    # The kernel dropped the dead holder's lock: its number is free again.
    first = free_display(FIRST)
    assert first <= held
    second = free_display(FIRST)
    assert second != first
    release_display(first)
    assert free_display(FIRST) == first
    release_display(first)
    release_display(second)
