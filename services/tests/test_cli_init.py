"""``selfagent init``: every secret compose needs, safely, never overwriting one.

Run as a person runs it (``selfagent init`` in the directory with
docker-compose.yml and .env.example). The compose side is checked without
starting anything: the ``${VAR:?message}`` guards read from the compose file,
the secret files it mounts, and ``config`` of the compose command on this
machine (which starts no container).
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from selfagent.bus.auth import IDENTITIES, ClientCredentials

ROOT = Path(__file__).resolve().parents[2]
GUARD = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?([^}]*)\}")
# What a person still chooses after init: the model.
CHOSEN = {"LLM_MODEL"}


def _init(directory: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "selfagent.cli", "init", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory laid out as the repository is for compose."""
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    return tmp_path


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_fresh_directory_gets_every_secret_private(project: Path) -> None:
    out = _init(project)
    env_file = project / ".env"
    assert _mode(env_file) == 0o600
    values = dotenv_values(env_file)
    example = dotenv_values(project / ".env.example")
    assert set(example) <= set(values)
    token = values["SELFAGENT_TOKEN"]
    assert token and len(token) >= 43  # 256 bits, url-safe base64
    assert token not in out, "init must not print a secret"
    for name, value in example.items():
        if name != "SELFAGENT_TOKEN":
            assert values[name] == value, name
    nats = project / "secrets" / "nats"
    assert _mode(nats) == 0o700
    passwords = set()
    for identity in IDENTITIES:
        path = nats / f"{identity.name}.env"
        assert _mode(path) == 0o600, path
        credentials = ClientCredentials.read(path)
        assert credentials.user == identity.name and len(credentials.password) >= 32
        passwords.add(credentials.password)
        assert credentials.password not in out
    assert len(passwords) == len(IDENTITIES), "each identity has its own password"
    config = (nats / "auth.conf").read_text()
    assert all(password in config for password in passwords)
    assert _mode(nats / "auth.conf") == 0o600
    assert "LLM_MODEL" in out, "it says what is left to do"


def test_running_it_again_keeps_every_value(project: Path) -> None:
    _init(project)
    before = _snapshot(project)
    out = _init(project)
    assert _snapshot(project) == before
    assert "all kept" in out and "generated" not in out


def test_an_existing_env_is_completed_not_replaced(project: Path) -> None:
    example = (project / ".env.example").read_text()
    # An .env from an older example: no NATS_PORT or PROVISIONER_WARM yet, the
    # person's own model and token, an empty secret, and too open a mode.
    kept = [
        line
        for line in example.splitlines()
        if not line.startswith(
            ("NATS_PORT=", "PROVISIONER_WARM=", "LLM_MODEL=", "SELFAGENT_TOKEN=")
        )
    ]
    env_file = project / ".env"
    env_file.write_text(
        "\n".join([*kept, "LLM_MODEL=my-model", "SELFAGENT_TOKEN=my-own-token"]) + "\n"
    )
    env_file.chmod(0o644)
    out = _init(project)
    values = dotenv_values(env_file)
    assert values["LLM_MODEL"] == "my-model"
    assert values["SELFAGENT_TOKEN"] == "my-own-token"
    assert values["NATS_PORT"] == "4222" and values["PROVISIONER_WARM"] == "1"
    assert "NATS_PORT" in out and "PROVISIONER_WARM" in out
    assert _mode(env_file) == 0o600
    assert "readable by you only" in out

    # An emptied secret is generated again, in its own line (how the token is rotated).
    text = env_file.read_text().replace("SELFAGENT_TOKEN=my-own-token", "SELFAGENT_TOKEN=")
    env_file.write_text(text)
    _init(project)
    lines = [
        line for line in env_file.read_text().splitlines() if line.startswith("SELFAGENT_TOKEN")
    ]
    assert len(lines) == 1 and lines[0] != "SELFAGENT_TOKEN=", lines


def test_a_deleted_identity_is_made_anew_and_only_it(project: Path) -> None:
    _init(project)
    nats = project / "secrets" / "nats"
    old = {i.name: ClientCredentials.read(nats / f"{i.name}.env").password for i in IDENTITIES}
    (nats / "planner.env").unlink()
    out = _init(project)
    assert "planner" in out
    new = {i.name: ClientCredentials.read(nats / f"{i.name}.env").password for i in IDENTITIES}
    assert new["planner"] != old["planner"]
    assert {k: v for k, v in new.items() if k != "planner"} == {
        k: v for k, v in old.items() if k != "planner"
    }
    config = (nats / "auth.conf").read_text()
    assert new["planner"] in config and old["planner"] not in config


def test_secrets_go_where_env_says(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (project / ".env").write_text(f"SELFAGENT_SECRETS={elsewhere}\nNATS_PORT=14222\n")
    _init(project)
    automation = ClientCredentials.read(elsewhere / "nats" / "automation.env")
    # The URL programs on this machine use: compose's published NATS port.
    assert automation.url == "nats://127.0.0.1:14222"
    assert not (project / "secrets").exists()


def _guards() -> dict[str, str]:
    return dict(GUARD.findall((ROOT / "docker-compose.yml").read_text()))


def test_after_init_compose_wants_only_the_model(project: Path) -> None:
    guards = _guards()
    assert "SELFAGENT_TOKEN" in guards
    assert "selfagent init" in guards["SELFAGENT_TOKEN"]
    _init(project)
    values = dotenv_values(project / ".env")
    unset = {name for name in guards if not values.get(name)}
    assert unset == CHOSEN


def test_every_secret_file_compose_reads_is_one_init_writes(project: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    referenced: set[str] = set()
    for service in compose["services"].values():
        env_files = service.get("env_file") or []
        referenced.update([env_files] if isinstance(env_files, str) else env_files)
        for volume in service.get("volumes") or []:
            # Either spelling: {source: ...} or "source:target:ro".
            source = (
                volume.get("source", "")
                if isinstance(volume, dict)
                # The target is the first part that starts with "/" ("${X:-./y}" holds a ":").
                else re.split(r":(?=/)", volume, maxsplit=1)[0]
            )
            if "SELFAGENT_SECRETS" in source:
                referenced.add(source)
    assert len(referenced) >= len(IDENTITIES) - 2 + 1, referenced  # services' files, auth.conf
    _init(project)
    secrets_dir = project / str(dotenv_values(project / ".env")["SELFAGENT_SECRETS"])
    for reference in referenced:
        relative = re.sub(r"^\$\{SELFAGENT_SECRETS[^}]*\}/", "", reference)
        assert relative != reference, f"{reference} is not under SELFAGENT_SECRETS"
        assert (secrets_dir / relative).is_file(), reference


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _compose_config(project: Path) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("no compose command on this machine (the guards are checked above)")
    return subprocess.run(
        [
            *command,
            "-f",
            str(project / "docker-compose.yml"),
            "--env-file",
            str(project / ".env"),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=project,
        # Only the env file may supply values.
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(project)},
    )


def test_compose_refuses_without_the_token_and_says_what_to_run(project: Path) -> None:
    # A person who chose the model but never ran init (compose names the first missing value).
    example = (project / ".env.example").read_text()
    (project / ".env").write_text(example.replace("LLM_MODEL=\n", "LLM_MODEL=some-model\n"))
    result = _compose_config(project)
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "set SELFAGENT_TOKEN in .env" in said and "selfagent init" in said, said


def test_compose_takes_the_values_init_wrote(project: Path) -> None:
    _init(project)
    env_file = project / ".env"
    env_file.write_text(env_file.read_text().replace("LLM_MODEL=\n", "LLM_MODEL=some-model\n"))
    result = _compose_config(project)
    said = result.stdout + result.stderr
    # Compose v1 cannot read the whole file (it predates some v2 options) and
    # fails after interpolation; no value may be missing in either.
    assert "Missing mandatory value" not in said and "required variable" not in said, said
    if "create_host_path" not in said:
        assert result.returncode == 0, said
