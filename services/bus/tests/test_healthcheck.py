"""``python -m selfagent.bus.healthcheck`` as the images run it: a real process and server."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port

PASSWORD = "hc-secret-pw"


@pytest.fixture(scope="module")
def locked_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        store_dir=tmp_path_factory.mktemp("nats"),
        extra_config=f'authorization {{ user: svc, password: "{PASSWORD}" }}',
    ).start()
    yield server
    server.cleanup()


def _check(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Only what the test names: no NATS URL or token from the developer's shell
    # (and no .env: cwd is a fresh directory).
    clean = {k: v for k, v in os.environ.items() if "NATS_URL" not in k and "TOKEN" not in k}
    return subprocess.run(
        [sys.executable, "-m", "selfagent.bus.healthcheck", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _good(server: EmbeddedNats) -> str:
    return f"nats://svc:{PASSWORD}@127.0.0.1:{server.port}"


@pytest.mark.parametrize("service", ["planner", "grounder", "actuator", "gateway", "provisioner"])
def test_reads_the_services_own_setting(
    locked_nats: EmbeddedNats, tmp_path: Path, service: str
) -> None:
    """``<SERVICE>_NATS_URL`` alone is enough, as it is for the service."""
    prefix = service.upper()
    # The gateway's settings are invalid without a token (and so is the gateway).
    token = {"SELFAGENT_TOKEN": secrets.token_urlsafe(24)} if service == "gateway" else {}
    result = _check(tmp_path, service, **token, **{f"{prefix}_NATS_URL": _good(locked_nats)})
    assert result.returncode == 0, result.stderr
    assert f"nats://127.0.0.1:{locked_nats.port}" in result.stdout
    # The same service pointed elsewhere is unhealthy: the setting was really read.
    down = f"nats://127.0.0.1:{free_port()}"
    result = _check(tmp_path, service, **token, **{f"{prefix}_NATS_URL": down})
    assert result.returncode == 1, result.stdout


def test_shared_nats_url(locked_nats: EmbeddedNats, tmp_path: Path) -> None:
    assert _check(tmp_path, NATS_URL=_good(locked_nats)).returncode == 0
    assert _check(tmp_path, "planner", NATS_URL=_good(locked_nats)).returncode == 0


def test_user_and_password_settings_as_compose_passes_them(
    locked_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """``NATS_USER``/``NATS_PASSWORD`` (compose's env_file), and a service's own over them."""
    url = f"nats://127.0.0.1:{locked_nats.port}"
    shared = {"NATS_URL": url, "NATS_USER": "svc", "NATS_PASSWORD": PASSWORD}
    assert _check(tmp_path, "planner", **shared).returncode == 0
    assert _check(tmp_path, **shared).returncode == 0
    wrong = _check(tmp_path, "planner", **shared, PLANNER_NATS_PASSWORD="its-own-wrong-one")
    assert wrong.returncode == 1 and "authorization" in wrong.stderr.lower(), wrong.stderr
    assert "its-own-wrong-one" not in wrong.stdout + wrong.stderr
    # Without the password the server refuses too: the setting was really read.
    assert _check(tmp_path, "planner", NATS_URL=url, NATS_USER="svc").returncode == 1


def test_refused_password_is_unhealthy_and_not_printed(
    locked_nats: EmbeddedNats, tmp_path: Path
) -> None:
    url = f"nats://svc:not-the-password@127.0.0.1:{locked_nats.port}"
    result = _check(tmp_path, "planner", NATS_URL=url)
    assert result.returncode == 1
    assert "authorization" in result.stderr.lower(), result.stderr
    assert "not-the-password" not in result.stdout + result.stderr


def test_unreachable_is_unhealthy_quickly(tmp_path: Path) -> None:
    # Starting the interpreter and importing the module is not the check's
    # doing, and takes seconds on a loaded machine: measured just before.
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import selfagent.bus.healthcheck"], check=True, timeout=60
    )
    startup = time.monotonic() - began
    started = time.monotonic()
    result = _check(tmp_path, NATS_URL=f"nats://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "unhealthy" in result.stderr
    # One refused connection, not nats-py's 60 attempts with back-off.
    assert time.monotonic() - started < startup + 5


def test_invalid_service_settings_are_unhealthy(locked_nats: EmbeddedNats, tmp_path: Path) -> None:
    result = _check(tmp_path, "gateway", NATS_URL=_good(locked_nats))
    assert result.returncode == 1
    assert "gateway settings are invalid" in result.stderr
