"""The ``selfagent`` command.

selfagent up        run everything locally (no Docker) and print the URL
selfagent init      write every secret compose needs (.env, NATS identities); keeps existing ones
selfagent run "instruction" [--session SID]   run a task and follow it live (--json for scripts)
selfagent sessions  list sessions
selfagent stop SID  stop a session's task
selfagent nats-credentials   NATS identities and server config for compose
selfagent schemas   rewrite schemas/json from the pydantic models
selfagent eval      run the desktop task suite against a stack (see --help)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from dotenv import load_dotenv


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "selfagent"


def _model_findings() -> list[str]:
    """What the model endpoints say, before anything starts; never stops the start."""
    import asyncio

    from selfagent.grounder.config import Settings as GrounderSettings
    from selfagent.modelcheck import check_endpoint
    from selfagent.planner.config import Settings as PlannerSettings

    planner = PlannerSettings()
    grounder = GrounderSettings()

    async def check() -> list[str]:
        reports = [
            check_endpoint(
                planner.llm_api_base_url,
                planner.llm_model,
                planner.llm_api_key.get_secret_value(),
                prefix="LLM_",
            )
        ]
        if grounder.uses_model:
            reports.append(
                check_endpoint(
                    grounder.api_base_url, grounder.model, grounder.api_key, prefix="GROUNDER_"
                )
            )
        return [line for report in await asyncio.gather(*reports) for line in report.lines()]

    return asyncio.run(check())


def _up(args: argparse.Namespace) -> int:
    from selfagent.bus.runtime import EXIT_CANNOT_START
    from selfagent.errors import LocalModeError
    from selfagent.local import LocalStack

    load_dotenv(Path.cwd() / ".env")
    if not os.environ.get("LLM_API_BASE_URL"):
        print(
            "note: LLM_API_BASE_URL is not set; copy .env.example to .env and fill it in",
            file=sys.stderr,
        )
    for line in _model_findings():
        print(f"model: {line}", file=sys.stderr, flush=True)
    # Kept by default: what the agent made (homes), the history (NATS) and
    # the token outlive a restart; --ephemeral throws everything away.
    data_dir = None if args.ephemeral else Path(args.data_dir or default_data_dir()).resolve()
    stack = LocalStack(
        run_dir=data_dir,
        gateway_port=args.port,
        desktops=args.desktops,
        keep_token=data_dir is not None,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except LocalModeError as exc:
        print(f"selfagent: {exc}", file=sys.stderr)
        return 1
    print(
        f"\n  selfagent is running: {stack.gateway_url}/?token={stack.token}\n"
        f"  NATS for programs: {stack.nats_url}  (automation credentials: "
        f"{stack.automation_credentials}; see docs/automation.md)\n"
        f"  data: {stack.run_dir}{' (deleted at exit: --ephemeral)' if data_dir is None else ''}\n"
        f"  logs: {stack.run_dir}/logs    Ctrl-C stops everything.\n"
        f"  metrics (Prometheus, docs/operations.md) on 127.0.0.1: "
        + ", ".join(f"{name} :{port}" for name, port in stack.metrics_ports.items())
        + "\n",
        flush=True,
    )
    restarts: dict[str, int] = {}
    try:
        while not stopping.wait(1.0):
            for name, process in list(stack.processes.items()):
                if process.poll() is None:
                    continue
                if name == "sandbox":
                    print("selfagent: the sandbox desktop exited; stopping", file=sys.stderr)
                    stopping.set()
                    break
                if process.returncode == EXIT_CANNOT_START:
                    # A bad setting or refused credentials: restarting cannot help.
                    print(
                        f"selfagent: {name} cannot run (see {stack.run_dir}/logs/{name}.log); "
                        "stopping",
                        file=sys.stderr,
                    )
                    stopping.set()
                    break
                # Back off, so a service that cannot start does not spin.
                restarts[name] = restarts.get(name, 0) + 1
                delay = min(2 ** restarts[name], 60)
                print(
                    f"selfagent: {name} exited with {process.returncode}; restarting in "
                    f"{delay} s (see {stack.run_dir}/logs/{name}.log)",
                    file=sys.stderr,
                )
                stack.processes.pop(name)
                if stopping.wait(delay):
                    break
                stack.start_service(name)
    finally:
        print("selfagent: stopping...", flush=True)
        stack.stop(remove=data_dir is None)
    return 0


def _nats_credentials(args: argparse.Namespace) -> int:
    from selfagent.bus.auth import write_deployment

    try:
        written = write_deployment(Path(args.dir), url=args.url)
    except ValueError as exc:
        print(f"selfagent: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not written[:-1]:
        print("every identity already had its credentials; kept them")
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from selfagent.schemas.export import main as export

    return export()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="selfagent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run NATS, the sandbox desktop and all services locally")
    up.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")))
    up.add_argument(
        "--data-dir",
        help="where the desktops' homes, the task history, the token and the logs are kept "
        "(default: $XDG_DATA_HOME/selfagent, i.e. ~/.local/share/selfagent)",
    )
    up.add_argument(
        "--ephemeral",
        action="store_true",
        help="keep nothing: a temporary directory, deleted when selfagent stops",
    )
    up.add_argument(
        "--desktops",
        choices=("per_session", "fixed"),
        default=os.environ.get("SELFAGENT_DESKTOPS", "per_session"),
        help="per_session (default): a desktop per session, from a warm pool; "
        "fixed: one desktop every session shares",
    )
    up.set_defaults(run=_up)
    credentials = commands.add_parser(
        "nats-credentials",
        help="write NATS identities and the server's authorization config (for compose)",
    )
    credentials.add_argument(
        "--dir",
        default=os.environ.get("SELFAGENT_SECRETS", "secrets") + "/nats",
        help="where (default: $SELFAGENT_SECRETS/nats, else secrets/nats); existing files are kept",
    )
    credentials.add_argument(
        "--url",
        default="nats://127.0.0.1:4222",
        help="the NATS URL written for automation and admin (NATS_BIND:NATS_PORT of compose)",
    )
    credentials.set_defaults(run=_nats_credentials)
    schemas = commands.add_parser("schemas", help="export JSON Schema files")
    schemas.set_defaults(run=_schemas)
    from selfagent import cli_init, cli_run
    from selfagent.eval.cli import add_parser as add_eval

    cli_init.register(commands)
    cli_run.register(commands)
    add_eval(commands)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
