"""How much of each request a server's prefix cache can reuse: the `tools` family's context.

    python -m bench.prefix_cache [--steps 30]

Plays a 30-step task through the family's real rendering and window rule
(``ToolsFamily.render`` and ``shown``, with the runner's rule of forgetting
the screenshots a family no longer shows), each step with a new screenshot
of its own. For each request it finds the longest common prefix with the
previous request (on the JSON the client sends) and counts what comes after
it: the screenshots and characters a prefix cache (vLLM's automatic prefix
caching, OpenAI's prompt caching, llama.cpp's prompt cache) cannot reuse.
``sliding`` (the newest three screenshots, the earlier rule) is the baseline
of the same run; ``append`` is the default. Goal: at most 1.3 new
screenshots per step on average.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics

from selfagent.planner.families.base import Turn, View
from selfagent.planner.families.tools import ToolsFamily, Window

# Distinct bytes per screenshot, about the size of a 720p JPEG's data URI.
SHOT_BYTES = 60_000


def screenshot() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(os.urandom(SHOT_BYTES)).decode()


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    low, high = 0, n
    # Binary search on equal prefixes: the strings are megabytes long.
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def play(window: Window, steps: int) -> list[tuple[int, int, int]]:
    """Per request: (images sent, new images after the common prefix, new characters)."""
    family = ToolsFamily(window=window)
    turns: list[Turn] = []
    previous = ""
    rows = []
    for step in range(1, steps + 1):
        shot = screenshot()
        view = View("Tidy up the desktop", turns, shot, 1280, 720)
        sent = json.dumps(family.render(view))
        start = common_prefix(previous, sent)
        # An image the prefix ends inside of is new to the cache too.
        cut = sent.rfind("data:image", 0, start)
        if cut != -1 and sent.find('"}', cut) > start:
            start = cut
        rows.append((sent.count("data:image"), sent.count("data:image", start), len(sent) - start))
        previous = sent
        reply = json.dumps({"action": "move", "x": 100 + step, "y": 200})
        turns.append(Turn(step, reply, "ok", shot, reply))
        # The runner forgets what the family no longer shows.
        for old in turns[: family.shown(turns)]:
            old.screenshot = None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    results = {window: play(window, args.steps) for window in ("sliding", "append")}
    print("step   sliding: sent new  chars      append: sent new  chars")
    for step in range(args.steps):
        (s_sent, s_new, s_chars), (a_sent, a_new, a_chars) = (
            results["sliding"][step],
            results["append"][step],
        )
        print(
            f"{step + 1:4d}   {s_sent:10d} {s_new:3d} {s_chars:6d}   "
            f"{a_sent:12d} {a_new:3d} {a_chars:6d}"
        )
    # The first request has nothing before it: both pay for it in full.
    mean = {w: statistics.mean(r[1] for r in rows[1:]) for w, rows in results.items()}
    chars = {w: statistics.mean(r[2] for r in rows[1:]) for w, rows in results.items()}
    most = {w: max(r[0] for r in rows) for w, rows in results.items()}
    print(
        f"\nnew screenshots per step (mean of steps 2-{args.steps}): "
        f"sliding {mean['sliding']:.2f}, "
        f"append {mean['append']:.2f} ({mean['append'] / mean['sliding']:.2f}x; goal <= 1.3)"
    )
    print(
        f"new characters per step: sliding {chars['sliding']:.0f}, append {chars['append']:.0f} "
        f"({chars['append'] / chars['sliding']:.2f}x)"
    )
    print(f"most screenshots in one request: sliding {most['sliding']}, append {most['append']}")


if __name__ == "__main__":
    main()
