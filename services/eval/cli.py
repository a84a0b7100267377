"""``selfagent eval``: run the desktop task suite against a stack and report how the agent did.

    selfagent eval --list
    selfagent eval --local --tasks 'file-*' --repeat 3
    selfagent eval --gateway http://127.0.0.1:8080 --tasks settings,windows

Against a running stack it needs the gateway URL and token, and NATS
credentials that may ask the provisioner for a desktop's exec endpoint (the
admin identity that ``selfagent up`` writes to ``<data dir>/credentials``).
``--local`` starts a local stack of its own (per-session desktops), with the
model settings of the environment and ``.env``, and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .suite import SUITE, EvalTask, select


def add_parser(commands: Any) -> None:
    """Registers ``eval`` on the ``selfagent`` command's subparsers."""
    parser = commands.add_parser(
        "eval",
        help="run the desktop task suite and report success rate, steps, time, tokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--list", action="store_true", help="print the suite, one task a line")
    parser.add_argument(
        "--tasks",
        action="append",
        help="task ids or categories (shell globs, comma-separated; repeatable); default: all",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each task N times (variance)")
    parser.add_argument(
        "--parallel", type=int, default=4, help="tasks at once, each on its own desktop (4)"
    )
    parser.add_argument(
        "--local", action="store_true", help="start a local stack for the run, stop it after"
    )
    parser.add_argument(
        "--gateway",
        default=os.environ.get("SELFAGENT_GATEWAY_URL", "http://127.0.0.1:8080"),
        help="the gateway's URL (default $SELFAGENT_GATEWAY_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--token", help="the gateway token (default $SELFAGENT_TOKEN, else <data dir>/token)"
    )
    parser.add_argument(
        "--data-dir", help="the data directory of `selfagent up` (for its token and credentials)"
    )
    parser.add_argument(
        "--nats-credentials",
        help="env file of a NATS identity that may use agent.provisioner.connect "
        "(default <data dir>/credentials/admin.env; else NATS_URL, NATS_USER, NATS_PASSWORD)",
    )
    parser.add_argument(
        "--out",
        help="where results.json and report.html go (default eval-results/<time>)",
    )
    parser.set_defaults(run=main)


def listing(tasks: list[EvalTask]) -> str:
    width = max(len(t.id) for t in tasks)
    cat = max(len(t.category) for t in tasks)
    return "\n".join(
        f"{t.id.ljust(width)}  {t.category.ljust(cat)}  {t.instruction}" for t in tasks
    )


def _patterns(raw: list[str] | None) -> list[str]:
    return [p.strip() for item in raw or [] for p in item.split(",") if p.strip()]


def main(args: argparse.Namespace) -> int:
    from dotenv import load_dotenv

    patterns = _patterns(args.tasks)
    tasks = select(patterns)
    if not tasks:
        print(f"selfagent eval: no task matches {patterns}", file=sys.stderr)
        return 2
    if args.list:
        print(listing(tasks))
        return 0
    if args.repeat < 1 or args.parallel < 1:
        print("selfagent eval: --repeat and --parallel must be at least 1", file=sys.stderr)
        return 2
    load_dotenv(Path.cwd() / ".env")
    out = Path(args.out or f"eval-results/{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
    if args.local:
        return _run_local(args, tasks, out)
    from selfagent.cli import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    token = args.token or os.environ.get("SELFAGENT_TOKEN") or _read(data_dir / "token")
    if not token:
        print(
            f"selfagent eval: no gateway token: --token, $SELFAGENT_TOKEN or {data_dir / 'token'}",
            file=sys.stderr,
        )
        return 2
    from selfagent.bus.auth import ClientCredentials

    creds_file = Path(args.nats_credentials or data_dir / "credentials" / "admin.env")
    if creds_file.is_file():
        creds = ClientCredentials.read(creds_file)
    else:
        creds = ClientCredentials(
            url=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
            user=os.environ.get("NATS_USER", ""),
            password=os.environ.get("NATS_PASSWORD", ""),
        )
    return _run(args, tasks, out, args.gateway, token, creds)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _run_local(args: argparse.Namespace, tasks: list[EvalTask], out: Path) -> int:
    from selfagent.bus.natsd import free_port
    from selfagent.errors import LocalModeError
    from selfagent.local import LocalStack

    # The environment wins over these: room for every task running at once.
    env = {
        "PROVISIONER_MAX_PER_HOST": str(args.parallel),
        "PROVISIONER_WARM": str(min(args.parallel, 2)),
    }
    stack = LocalStack(
        desktops="per_session",
        gateway_port=free_port(),
        extra_env={k: v for k, v in env.items() if k not in os.environ},
    )
    try:
        stack.start()
    except LocalModeError as exc:
        print(f"selfagent eval: {exc}", file=sys.stderr)
        stack.stop(remove=True)
        return 1
    try:
        assert stack.token is not None
        return _run(args, tasks, out, stack.gateway_url, stack.token, stack.credentials("admin"))
    finally:
        stack.stop(remove=True)


def _run(
    args: argparse.Namespace,
    tasks: list[EvalTask],
    out: Path,
    gateway: str,
    token: str,
    creds: Any,
) -> int:
    from . import report
    from .runner import Runner, RunResult, Target

    total = len(tasks) * args.repeat

    def progress(result: RunResult) -> None:
        mark = "pass" if result.passed else f"FAIL {result.reason[:100]}"
        print(f"  {result.task} #{result.attempt + 1}: {mark} ({result.wall_s:.0f} s)", flush=True)

    print(f"selfagent eval: {total} runs, {args.parallel} at once, against {gateway}", flush=True)
    started = time.monotonic()
    runner = Runner(Target(gateway, token, creds), parallel=args.parallel, on_result=progress)
    results = asyncio.run(runner.run(tasks, repeat=args.repeat))
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "gateway": gateway,
        "model": os.environ.get("LLM_MODEL", "(as the planner is configured)"),
        "planner_family": os.environ.get("PLANNER_FAMILY", "auto"),
        "grounder": os.environ.get("GROUNDER_MODEL") or os.environ.get("GROUNDER_FAMILY", ""),
        "tasks": len(tasks),
        "repeat": args.repeat,
        "parallel": args.parallel,
        "wall_s": round(time.monotonic() - started, 1),
    }
    json_path, html_path, text = report.write(out, results, meta)
    print(text)
    print(f"wrote {json_path} and {html_path}")
    return 0


__all__ = ["SUITE", "add_parser", "main"]
