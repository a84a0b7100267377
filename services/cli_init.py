"""``selfagent init``: every secret compose needs, so that set-up is choosing a model.

It writes ``.env`` (from ``.env.example`` when there is none: the settings
with their defaults, and a generated ``SELFAGENT_TOKEN``) and the NATS
identities with the server's authorization config (``write_deployment``,
what ``selfagent nats-credentials`` writes). Run again, it keeps every value
and every identity already there and fills in only what is missing: a
setting that ``.env.example`` gained since, an empty secret, a deleted
identity file. That is also how a secret is rotated: empty or delete it, run
``init`` again (README, "Rotating secrets").

The desktops' VNC passwords and exec tokens are not here: the provisioner
makes a new pair for every desktop it starts.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values


def _token() -> str:
    # 256 bits: past any minimum the gateway sets.
    return secrets.token_urlsafe(32)


# Generated when empty or missing.
GENERATED: dict[str, Callable[[], str]] = {"SELFAGENT_TOKEN": _token}
DEFAULT_SECRETS_DIR = "./secrets"
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


@dataclass
class InitReport:
    env_file: Path
    created: bool = False
    generated: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    tightened: bool = False
    nats_dir: Path | None = None
    nats_written: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        said = [f"{'wrote' if self.created else 'kept'} {self.env_file} (mode 0600)"]
        if self.tightened:
            said.append(f"  made {self.env_file.name} readable by you only (it holds secrets)")
        for name in self.generated:
            said.append(f"  {name}: generated (it stays in {self.env_file.name})")
        if self.added:
            said.append(f"  added from .env.example: {', '.join(self.added)}")
        identities = [p.stem for p in self.nats_written if p.suffix == ".env"]
        if identities:
            said.append(f"NATS identities written to {self.nats_dir}: {', '.join(identities)}")
        elif self.nats_dir is not None:
            said.append(f"NATS identities in {self.nats_dir}: all kept")
        return said


def _assigned(lines: list[str]) -> dict[str, int]:
    """Which variable each line sets (the last line wins, as in dotenv)."""
    found: dict[str, int] = {}
    for number, line in enumerate(lines):
        if match := _ASSIGNMENT.match(line):
            found[match.group(1)] = number
    return found


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, never readable by others, not even briefly."""
    descriptor, temporary = tempfile.mkstemp(prefix=".env.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _nats_url(values: dict[str, str | None]) -> str:
    """Where programs on this machine reach the published NATS port."""
    bind = values.get("NATS_BIND") or "127.0.0.1"
    if bind in ("0.0.0.0", "::", "[::]"):
        bind = "127.0.0.1"
    return f"nats://{bind}:{values.get('NATS_PORT') or '4222'}"


def init(directory: Path) -> InitReport:
    """Fill ``directory/.env`` and the NATS identities; keep whatever is there."""
    from selfagent.bus.auth import write_deployment

    env_file = directory / ".env"
    example = directory / ".env.example"
    report = InitReport(env_file=env_file, created=not env_file.exists())
    report.tightened = not report.created and bool(env_file.stat().st_mode & 0o077)
    text = env_file.read_text() if env_file.exists() else ""
    if report.created and example.is_file():
        text = example.read_text()
    lines = text.splitlines()
    present = _assigned(lines)
    if not report.created and example.is_file():
        # Settings the example gained since this .env was made, with their defaults.
        example_lines = example.read_text().splitlines()
        missing = [name for name in _assigned(example_lines) if name not in present]
        if missing:
            lines += ["", "# added by selfagent init, from .env.example"]
            for name in missing:
                lines.append(example_lines[_assigned(example_lines)[name]])
            report.added = missing
            present = _assigned(lines)
    values = _values("\n".join(lines))
    for name, generate in GENERATED.items():
        if values.get(name):
            continue
        line = f"{name}={generate()}"
        if name in present:
            lines[present[name]] = line
        else:
            lines.append(line)
        report.generated.append(name)
    if not values.get("SELFAGENT_SECRETS"):
        line = f"SELFAGENT_SECRETS={DEFAULT_SECRETS_DIR}"
        if "SELFAGENT_SECRETS" in present:
            lines[present["SELFAGENT_SECRETS"]] = line
        else:
            lines.append(line)
    new_text = "\n".join(lines) + "\n"
    if report.created or new_text != text:
        _write_private(env_file, new_text)
    env_file.chmod(0o600)
    values = _values(new_text)
    secrets_dir = Path(values.get("SELFAGENT_SECRETS") or DEFAULT_SECRETS_DIR)
    if not secrets_dir.is_absolute():
        # Compose reads relative paths from the compose file's directory.
        secrets_dir = directory / secrets_dir
    report.nats_dir = secrets_dir / "nats"
    report.nats_written = write_deployment(report.nats_dir, url=_nats_url(values))
    return report


def _values(text: str) -> dict[str, str | None]:
    return dict(dotenv_values(stream=io.StringIO(text)))


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    if not directory.is_dir():
        print(f"selfagent: {directory} is not a directory", file=sys.stderr)
        return 2
    try:
        report = init(directory)
    except (OSError, ValueError) as exc:
        print(f"selfagent: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    values = _values(report.env_file.read_text())
    if not values.get("LLM_MODEL"):
        print("next: set LLM_MODEL (and LLM_API_BASE_URL) in .env, then docker compose up --build")
    else:
        print("next: docker compose up --build")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "init",
        help="write every secret compose needs (.env, NATS identities); keeps existing ones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        default=".",
        help="the directory with docker-compose.yml and .env.example (default: here)",
    )
    parser.set_defaults(run=_init)
