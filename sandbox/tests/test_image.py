"""The sandbox image, built and run with the real Docker engine."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.docker import (
    Container,
    container,
    image_config,
    image_size,
    memory_report,
    require_engine,
    run,
    unique_name,
)
from tests.harness.docker import build_image as _build

pytestmark = pytest.mark.docker

TAG = "selfagent/sandbox:test"
WIDTH, HEIGHT = 1366, 768


@pytest.fixture(scope="module")
def image() -> str:
    require_engine()
    seconds = _build("sandbox/Dockerfile", TAG)
    size_mib = image_size(TAG) / 1024 / 1024
    print(f"\nsandbox image: built in {seconds:.1f} s (cached layers count), {size_mib:.0f} MiB")
    return TAG


@pytest.fixture(scope="module")
def secrets_() -> dict[str, str]:
    return {
        "VNC_PASSWORD": "vnc-" + secrets.token_hex(4),
        "SANDBOX_EXEC_TOKEN": secrets.token_urlsafe(24),
    }


@pytest.fixture(scope="module")
def sandbox(image: str, secrets_: dict[str, str]) -> Iterator[Container]:
    env = secrets_ | {"SCREEN_WIDTH": str(WIDTH), "SCREEN_HEIGHT": str(HEIGHT)}
    with container(image, env=env, publish=(5901, 8700), prefix="selfagent-sandbox") as handle:
        handle.wait_healthy(timeout=120)
        yield handle


@pytest.fixture(scope="module")
def exec_url(sandbox: Container) -> str:
    return f"http://127.0.0.1:{sandbox.host_port(8700)}"


def _exec_long(url: str, token: str, command: str) -> dict[str, object]:
    response = httpx.post(
        url + "/exec",
        json={"command": command, "timeout": 240},
        headers={"Authorization": f"Bearer {token}"},
        timeout=260,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def _exec(url: str, token: str, command: str) -> dict[str, object]:
    response = httpx.post(
        url + "/exec",
        json={"command": command, "timeout": 20},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def test_refuses_to_start_without_vnc_password(image: str) -> None:
    name = unique_name("selfagent-nopw")
    try:
        result = run(["docker", "run", "--name", name, image], check=False, timeout=60)
        assert result.returncode != 0
        assert "VNC_PASSWORD is not set" in result.stderr + result.stdout
    finally:
        run(["docker", "rm", "-f", "-v", name], check=False)


def test_image_metadata(image: str) -> None:
    config = image_config(image)
    assert config["User"] == "agent"
    assert "/home/agent" in (config.get("Volumes") or {})  # type: ignore[operator]
    assert config["Healthcheck"], "the image declares no HEALTHCHECK"
    env = dict(item.split("=", 1) for item in config["Env"])  # type: ignore[attr-defined]
    assert env["VNC_LISTEN"] == "0.0.0.0"
    assert env["SANDBOX_EXEC_HOST"] == "0.0.0.0"


def test_runs_as_non_root(sandbox: Container) -> None:
    assert sandbox.exec("id", "-u").strip() == "1000"
    # Every process of the desktop, not just `docker exec`, is the agent user.
    users = set(sandbox.exec("ps", "-eo", "user=").split())
    assert users == {"agent"}, users


def test_vnc_answers_with_rfb_and_demands_a_password(sandbox: Container) -> None:
    with socket.create_connection(("127.0.0.1", sandbox.host_port(5901)), timeout=10) as sock:
        banner = sock.recv(12)
        assert banner.startswith(b"RFB 003.")
        sock.sendall(b"RFB 003.008\n")
        count = sock.recv(1)[0]
        types = set(sock.recv(count))
    assert 1 not in types, "the VNC server offers connections without authentication"
    assert 2 in types


def test_exec_endpoint_from_outside(
    sandbox: Container, exec_url: str, secrets_: dict[str, str]
) -> None:
    token = secrets_["SANDBOX_EXEC_TOKEN"]
    assert httpx.post(exec_url + "/exec", json={"command": "id"}, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(exec_url + "/exec", json={"command": "id"}, headers=wrong).status_code == 401
    body = _exec(exec_url, token, 'id -u; echo "$DISPLAY"; xdotool getdisplaygeometry')
    assert body["exit_code"] == 0
    assert str(body["stdout"]).split("\n")[:3] == ["1000", ":1", f"{WIDTH} {HEIGHT}"]


def test_file_round_trip_and_permissions(exec_url: str, secrets_: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {secrets_['SANDBOX_EXEC_TOKEN']}"}
    payload = bytes(range(256)) * 512
    with httpx.Client(base_url=exec_url, headers=headers, timeout=30) as client:
        put = client.put("/files", params={"path": "Desktop/in/blob.bin"}, content=payload)
        assert put.status_code == 201, put.text
        assert put.json()["path"] == "/home/agent/Desktop/in/blob.bin"
        assert (
            client.get("/files", params={"path": "/home/agent/Desktop/in/blob.bin"}).content
            == payload
        )
        assert client.get("/files", params={"path": "/nope"}).status_code == 404
        # The endpoint has the desktop user's rights, not root's.
        assert client.get("/files", params={"path": "/etc/shadow"}).status_code == 403
        assert client.put("/files", params={"path": "/etc/x"}, content=b"x").status_code == 403


def test_desktop_programs_do_not_see_the_secrets(
    sandbox: Container, exec_url: str, secrets_: dict[str, str]
) -> None:
    env_of_session = sandbox.exec("sh", "-c", "cat /proc/$(pgrep -o xfce4-session)/environ")
    assert "DISPLAY=:1" in env_of_session
    for value in secrets_.values():
        assert value not in env_of_session
    shell_env = str(_exec(exec_url, secrets_["SANDBOX_EXEC_TOKEN"], "env")["stdout"])
    for value in secrets_.values():
        assert value not in shell_env


# Run by the desktop user through the exec endpoint: look for the secrets in
# every process's environment and command line, every descriptor it may open,
# and every file under the writable places. The secrets come reversed and
# hex-encoded, so this command's own /proc files do not contain them. Decoys
# planted the same three ways show that the search finds what is readable.
_SEARCH = r"""
import json, os, subprocess, sys, tempfile
secrets = [bytes.fromhex(h)[::-1] for h in sys.argv[1:]]
obfuscated = subprocess.run(["vncpasswd", "-f"], input=secrets[0] + b"\n",
                            capture_output=True, check=True).stdout
needles = {"vnc": secrets[0], "vnc-obfuscated": obfuscated, "token": secrets[1]}
decoy = os.urandom(12).hex().encode()
needles["decoy"] = decoy
held = tempfile.NamedTemporaryFile(dir="/tmp")
held.write(decoy); held.flush()
env_holder = subprocess.Popen(["sleep", "60"], env={"DECOY": decoy.decode()},
                              pass_fds=[held.fileno()])
with open(os.path.expanduser("~/decoy.txt"), "wb") as f:
    f.write(decoy)
os.unlink(held.name)  # now only an open descriptor of the sleeper and us
me = {os.getpid(), os.getppid()}
found, denied = [], []
def look(path):
    try:
        with open(path, "rb") as f:
            data = f.read(64 << 20)
    except PermissionError:
        denied.append(path); return
    except OSError:
        return
    found.extend(f"{name} in {path}" for name, n in needles.items() if n in data)
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    if pid in me:
        continue
    look(f"/proc/{pid}/environ")
    look(f"/proc/{pid}/cmdline")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        denied.append(f"/proc/{pid}/fd"); continue
    except OSError:
        continue
    for fd in fds:
        target = os.path.realpath(f"/proc/{pid}/fd/{fd}")
        if not target.startswith(("/dev/", "/proc/", "pipe:", "socket:", "anon_inode:")):
            look(f"/proc/{pid}/fd/{fd}")
for top in ("/tmp", "/var/tmp", "/run", "/dev/shm", "/home", "/etc", "/opt", "/var", "/root"):
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                look(path)
env_holder.kill()
print(json.dumps({"found": sorted(set(found)), "denied": denied}))
"""


def test_the_desktop_user_cannot_read_the_secrets_anywhere(
    sandbox: Container, exec_url: str, secrets_: dict[str, str]
) -> None:
    token = secrets_["SANDBOX_EXEC_TOKEN"]
    names = ("VNC_PASSWORD", "SANDBOX_EXEC_TOKEN")
    hidden = [secrets_[name].encode()[::-1].hex() for name in names]
    script = _SEARCH.replace("'", "'\\''")
    body = _exec_long(exec_url, token, f"python3 -c '{script}' {' '.join(hidden)}")
    assert body["exit_code"] == 0, body
    report = json.loads(str(body["stdout"]))
    found = report["found"]
    # The search works: it finds the decoy in an environment, a file and a
    # deleted file held open.
    assert any(f.startswith("decoy in /proc/") and f.endswith("/environ") for f in found), found
    assert "decoy in /home/agent/decoy.txt" in found, found
    assert any(f.startswith("decoy in /proc/") and "/fd/" in f for f in found), found
    assert [f for f in found if not f.startswith("decoy ")] == [], found
    # Not by luck: the processes that hold them are closed to the desktop user.
    pids = {
        name: sandbox.exec("pgrep", "-o", "-f", pattern).strip()
        for name, pattern in (
            ("tini", "^tini"),
            ("xvnc", "^Xvnc"),
            ("start.sh", "libexec/selfagent/sh /opt"),
            ("exec", "exec_server.py"),
        )
    }
    denied = set(report["denied"])
    for name, pid in pids.items():
        assert pid, name
        assert f"/proc/{pid}/environ" in denied, (name, pid, sorted(denied))
        assert f"/proc/{pid}/fd" in denied, (name, pid, sorted(denied))


def test_gui_program_launched_through_exec_appears(exec_url: str, secrets_: dict[str, str]) -> None:
    token = secrets_["SANDBOX_EXEC_TOKEN"]
    started = time.monotonic()
    body = _exec(exec_url, token, "mousepad >/dev/null 2>&1 & echo $!")
    assert time.monotonic() - started < 5
    pid = int(str(body["stdout"]).strip())
    try:
        search = _exec(exec_url, token, "xdotool search --sync --onlyvisible --class mousepad")
        assert str(search["stdout"]).strip(), "no mousepad window on the sandbox display"
    finally:
        _exec(exec_url, token, f"kill {pid}")


def test_home_is_a_volume(sandbox: Container) -> None:
    mounts = sandbox.inspect("{{range .Mounts}}{{.Destination}} {{end}}").split()
    assert "/home/agent" in mounts


def _rss_kib(sandbox: Container) -> int:
    return sum(int(rss) for rss in sandbox.exec("ps", "-eo", "rss=").split())


def _wait_until_idle(sandbox: Container, quiet: float = 0.5, timeout: float = 30) -> None:
    """Until the processes' memory stops changing (within 1% over ``quiet`` seconds):
    the session has settled, and what earlier tests started has gone."""
    deadline = time.monotonic() + timeout
    last = _rss_kib(sandbox)
    while True:
        time.sleep(quiet)
        now = _rss_kib(sandbox)
        if abs(now - last) <= 0.01 * last:
            return
        assert time.monotonic() < deadline, f"memory still changing after {timeout} s"
        last = now


def test_idle_memory(sandbox: Container) -> None:
    _wait_until_idle(sandbox)
    report = memory_report(sandbox)
    print(f"\nsandbox idle memory: {report}")
    usage = run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", sandbox.name])
    used, unit = usage.stdout.split("/")[0].strip()[:-3], usage.stdout.split("/")[0].strip()[-3:]
    mib = float(used) * {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[unit]
    assert mib < 600, f"idle sandbox uses {mib:.0f} MiB"


def test_stops_promptly(image: str, secrets_: dict[str, str]) -> None:
    # Last: a separate container, so the shared one is not disturbed.
    with container(image, env=secrets_, prefix="selfagent-stop") as handle:
        handle.wait_healthy(timeout=120)
        started = time.monotonic()
        run(["docker", "stop", "-t", "15", handle.name], timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"docker stop took {elapsed:.1f} s (SIGTERM not handled)"
