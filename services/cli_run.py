"""``selfagent run``, ``sessions`` and ``stop``: the gateway's API from a terminal or a script.

They talk to the gateway (REST and the ``/ws/events`` WebSocket) with the
access token, not to NATS with the automation account: the token is the one
credential a person already has (the page's URL carries it), the gateway is
the port compose publishes anyway (NATS for programs is optional and may be
bound elsewhere), and it is the same authentication, validation and session
bookkeeping as the web page (a task started here shows up there).

Exit codes (also in ``selfagent run --help``) let scripts tell outcomes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import dotenv_values

if TYPE_CHECKING:
    from rich.console import Console

    from .cli_gateway import GatewayClient

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_NEEDS_USER = 4
EXIT_CANNOT_CONNECT = 5
EXIT_TOKEN = 6
EXIT_NOT_FOUND = 7
EXIT_GATEWAY = 8
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""\
exit codes:
  {EXIT_SUCCEEDED}    the task succeeded (sessions, stop: done)
  {EXIT_FAILED}    the task failed
  {EXIT_USAGE}    bad arguments, or the gateway rejected the request as invalid
  {EXIT_STOPPED}    the task was stopped (selfagent stop, the page, Ctrl-C)
  {EXIT_NEEDS_USER}    the task asks you something and waits (answer it in the page)
  {EXIT_CANNOT_CONNECT}    cannot reach the gateway, or lost it and it did not come back
  {EXIT_TOKEN}    no token, or the gateway refused it
  {EXIT_NOT_FOUND}    no such session
  {EXIT_GATEWAY}    the gateway could not do it (e.g. no desktop free); the message says why
  {EXIT_INTERRUPTED}  Ctrl-C twice: stopped following; the task may still be running
"""

DEFAULT_URL = "http://127.0.0.1:8080"


class _CommandExit(Exception):
    """Ends a command with this exit code and message; never leaves the CLI modules."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- where the gateway is and what to show it ---------------------------------


def _dotenv(name: str) -> str | None:
    path = Path.cwd() / ".env"
    if not path.is_file():
        return None
    try:
        value = dotenv_values(path).get(name)
    except OSError:
        return None
    return value or None


def resolve_url(option: str | None) -> str:
    """--url, else SELFAGENT_URL, else this machine at GATEWAY_PORT (as ``selfagent up`` uses)."""
    if option:
        return option.rstrip("/")
    if url := os.environ.get("SELFAGENT_URL"):
        return url.rstrip("/")
    port = os.environ.get("GATEWAY_PORT") or _dotenv("GATEWAY_PORT")
    return f"http://127.0.0.1:{port}" if port else DEFAULT_URL


def resolve_token(option: str | None, data_dir: Path) -> tuple[str, str]:
    """The token and where it came from, in the order ``selfagent up`` picks its own:
    --token, SELFAGENT_TOKEN, ./.env, the data directory's token file."""
    if option:
        return option, "--token"
    if token := os.environ.get("SELFAGENT_TOKEN"):
        return token, "SELFAGENT_TOKEN"
    if token := _dotenv("SELFAGENT_TOKEN"):
        return token, ".env"
    path = data_dir / "token"
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if token:
        return token, str(path)
    raise _CommandExit(
        EXIT_TOKEN,
        f"no token: pass --token, set SELFAGENT_TOKEN, put it in ./.env, or start "
        f"`selfagent up` (it keeps one in {path})",
    )


# --- the commands --------------------------------------------------------------------


def _run_command(
    args: argparse.Namespace,
    body: Callable[[GatewayClient, Console], Awaitable[int]],
) -> int:
    from selfagent.cli import default_data_dir

    try:
        from rich.console import Console
        from rich.text import Text

        from .cli_gateway import GatewayClient
    except ImportError as exc:
        print(
            f"selfagent: {args.command} needs the cli extra ({exc.name} is missing): "
            "pip install 'selfagent[cli]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)
    try:
        token, _source = resolve_token(args.token, Path(args.data_dir or default_data_dir()))

        async def main() -> int:
            gateway = GatewayClient(resolve_url(args.url), token)
            try:
                return await body(gateway, console)
            finally:
                await gateway.aclose()

        return asyncio.run(main())
    except _CommandExit as exc:
        errors.print(Text(f"selfagent: {exc.message}", style="red"), soft_wrap=True)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# The bodies import cli_gateway when they run: _run_command has checked by then
# that its packages (the cli extra) are installed.


def _run(args: argparse.Namespace) -> int:
    def body(gateway: GatewayClient, console: Console) -> Awaitable[int]:
        from .cli_gateway import run_task

        return run_task(gateway, args.instruction, args.session, args.max_steps, console, args.json)

    return _run_command(args, body)


def _sessions(args: argparse.Namespace) -> int:
    def body(gateway: GatewayClient, console: Console) -> Awaitable[int]:
        from .cli_gateway import list_sessions

        return list_sessions(gateway, console, args.json)

    return _run_command(args, body)


def _stop(args: argparse.Namespace) -> int:
    def body(gateway: GatewayClient, console: Console) -> Awaitable[int]:
        from .cli_gateway import stop_session

        return stop_session(gateway, args.session_id, args.close, console, args.json)

    return _run_command(args, body)


def _export(args: argparse.Namespace) -> int:
    def body(gateway: GatewayClient, console: Console) -> Awaitable[int]:
        from .cli_gateway import export_trajectory

        out = Path(args.output) if args.output else None
        return export_trajectory(gateway, args.session_id, out, console, args.json)

    return _run_command(args, body)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"the gateway (default: $SELFAGENT_URL, else {DEFAULT_URL}, "
        "its port from $GATEWAY_PORT or ./.env)",
    )
    parser.add_argument(
        "--token",
        help="the access token (default: $SELFAGENT_TOKEN, ./.env, else the token file "
        "that `selfagent up` keeps in its data directory); prefer the variable: "
        "a command line is visible to other users",
    )
    parser.add_argument("--data-dir", help="where `selfagent up` keeps its token (its --data-dir)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="output for scripts: one JSON object per line on stdout",
    )


def register(commands: Any) -> None:
    """Add run, sessions, stop and export to the ``selfagent`` command's subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    run = commands.add_parser(
        "run",
        help="run an instruction and follow it live",
        description="Submit an instruction to the running selfagent and follow it live: "
        "each step (number, action, target, elapsed time) as it happens. Ctrl-C stops "
        "the task (twice: stop following and leave it running).\n\n"
        "--json: every event of the task as a line of JSON (as the gateway sends it), "
        'first {"kind": "cli.accepted", task_id, session_id}, last {"kind": "cli.result", '
        "status, reply, steps, error, question, exit_code}.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    run.add_argument("instruction")
    run.add_argument("--session", help="continue this session (default: a new session)")
    run.add_argument("--max-steps", type=int, help="a step budget for this task")
    _common(run)
    run.set_defaults(run=_run)
    sessions = commands.add_parser(
        "sessions",
        help="list sessions, newest first",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    _common(sessions)
    sessions.set_defaults(run=_sessions)
    stop = commands.add_parser(
        "stop",
        help="stop a session's task",
        description="Stop the session's running task; the session stays, for a follow-up "
        "(selfagent run --session). --close also gives its desktop back.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    stop.add_argument("session_id")
    stop.add_argument(
        "--close", action="store_true", help="also end the session and give its desktop back"
    )
    _common(stop)
    stop.set_defaults(run=_stop)
    export = commands.add_parser(
        "export",
        help="save a session's trajectory (steps.jsonl and screenshots) as a zip",
        description="Save the session's trajectory from the gateway: a zip of steps.jsonl "
        "(one step a line: instruction, model call and reply, action, grounding, result, "
        "timings, tokens; JSON Schema TrajectoryStep, in the zip and in schemas/json/) and "
        "each step's screenshots under images/.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    export.add_argument("session_id")
    export.add_argument(
        "-o", "--output", help="the zip to write (default: selfagent-<session>.zip here)"
    )
    _common(export)
    export.set_defaults(run=_export)
