"""The sandbox exec/file endpoint, exercised as a real process over real HTTP."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "exec_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ExecServer:
    url: str
    token: str
    home: Path
    process: subprocess.Popen[bytes]

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        auth = token if token is not None else self.token
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {auth}"}, timeout=timeout
        )

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS for the server process")


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # -I -S: no site-packages, so the server proves it needs only the stdlib
    # (the sandbox image has Debian's python3 and nothing else).
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", str(SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def base_env(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL")
    return {k: v for k, v in os.environ.items() if k in keep} | {
        "HOME": str(home),
        "DISPLAY": ":77",
    }


class Launcher:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, **extra_env: str) -> ExecServer:
        port = free_port()
        home = self.root / f"home-{port}"
        home.mkdir()
        token = secrets.token_urlsafe(24)
        env = base_env(home) | {
            "SANDBOX_EXEC_TOKEN": token,
            "SANDBOX_EXEC_PORT": str(port),
            "SANDBOX_EXEC_HOST": "127.0.0.1",
        }
        env |= extra_env
        log = self.root / f"exec-server-{port}.log"
        proc = spawn(env, log)
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exec server exited: {log.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return ExecServer(url=url, token=token, home=home, process=proc)
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("exec server did not answer /healthz within 10 s")

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ExecServer]]:
    launcher = Launcher(tmp_path)
    yield launcher.start
    launcher.stop_all()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecServer]:
    # One server for the tests that need no special settings: each start costs
    # a fresh interpreter, and those tests touch only their own files.
    launcher = Launcher(tmp_path_factory.mktemp("exec"))
    yield launcher.start()
    launcher.stop_all()


TEN_MB = 10 * 1024 * 1024
MIB = 1024 * 1024


def _exec(server: ExecServer, command: str, **fields: object) -> dict[str, object]:
    with server.client() as client:
        response = client.post("/exec", json={"command": command, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once the pid no longer names a live process (absent or a zombie)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# --- startup and auth --------------------------------------------------------


def test_refuses_to_start_without_token(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"SANDBOX_EXEC_PORT": str(free_port())}
    log = tmp_path / "log"
    proc = spawn(env, log)
    assert proc.wait(10) == 2
    assert "SANDBOX_EXEC_TOKEN is not set" in log.read_text()


def test_rejects_bad_numeric_setting(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"SANDBOX_EXEC_TOKEN": "t", "SANDBOX_EXEC_PORT": "eighty"}
    log = tmp_path / "log"
    assert spawn(env, log).wait(10) == 2
    assert "SANDBOX_EXEC_PORT must be an integer" in log.read_text()


def test_healthz_needs_no_token(server: ExecServer) -> None:
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "other-scheme", "empty"],
)
def test_every_route_but_healthz_needs_the_token(
    server: ExecServer, headers: dict[str, str]
) -> None:
    marker = server.home / "must-not-exist"
    with httpx.Client(base_url=server.url, headers=headers) as client:
        responses = [
            client.post("/exec", json={"command": f"touch {marker}"}),
            client.get("/files", params={"path": str(server.home)}),
            client.put("/files", params={"path": str(marker)}, content=b"x"),
        ]
    for response in responses:
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in response.json()["error"]
    assert not marker.exists()


def test_token_is_case_sensitive_and_exact(server: ExecServer) -> None:
    with server.client(token=server.token.upper() + "x") as client:
        assert client.post("/exec", json={"command": "true"}).status_code == 401
    with server.client(token=server.token) as client:
        assert client.post("/exec", json={"command": "true"}).status_code == 200


# --- running commands ----------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 127, 255])
def test_exit_code_and_both_streams(server: ExecServer, code: int) -> None:
    body = _exec(server, f"echo out-$((1+1)); echo err-line >&2; exit {code}")
    assert body["exit_code"] == code
    assert body["stdout"] == "out-2\n"
    assert body["stderr"] == "err-line\n"
    assert body["timed_out"] is False
    assert body["truncated"] is False


def test_signal_death_reports_128_plus_signal(server: ExecServer) -> None:
    body = _exec(server, "kill -TERM $$")
    assert body["exit_code"] == 128 + 15
    assert body["timed_out"] is False


def test_command_environment(server: ExecServer, tmp_path: Path) -> None:
    body = _exec(server, 'echo "$DISPLAY|$HOME|$(pwd)"; env', cwd=str(tmp_path))
    first, _, env_dump = str(body["stdout"]).partition("\n")
    assert first == f":77|{server.home}|{tmp_path}"
    # Secrets of the sandbox never reach commands run for the agent.
    assert server.token not in env_dump
    assert "SANDBOX_EXEC_TOKEN" not in env_dump


def test_default_cwd_is_home_and_relative_cwd_is_under_home(server: ExecServer) -> None:
    (server.home / "project").mkdir()
    assert _exec(server, "pwd")["stdout"] == f"{server.home}\n"
    assert _exec(server, "pwd", cwd="project")["stdout"] == f"{server.home / 'project'}\n"


def test_unicode_and_invalid_utf8_output(server: ExecServer) -> None:
    body = _exec(server, "printf 'h\\303\\251llo \\342\\234\\223\\n'; printf '\\377\\376\\n'")
    assert body["stdout"] == "h\u00e9llo \u2713\n\ufffd\ufffd\n"


def test_timeout_kills_the_whole_process_group(server: ExecServer) -> None:
    started = time.monotonic()
    body = _exec(server, "sleep 300 & echo $!; echo $$; wait", timeout=1)
    elapsed = time.monotonic() - started
    assert body["timed_out"] is True
    assert body["exit_code"] is None
    assert elapsed < 5, f"timeout of 1 s took {elapsed:.1f} s"
    child, shell = (int(line) for line in str(body["stdout"]).split())
    assert _gone(shell), f"shell {shell} still alive"
    assert _gone(child), f"background child {child} survived the timeout"


def test_timeout_with_a_process_holding_the_pipes(server: ExecServer) -> None:
    # A grandchild in its own session escapes the group kill; the request
    # must still come back on time instead of waiting for the pipe's EOF.
    body = _exec(server, "setsid sleep 30 & echo $!; sleep 60", timeout=1)
    assert body["timed_out"] is True
    escaped = int(str(body["stdout"]).split()[0])
    try:
        assert float(str(body["duration_ms"])) < 4000
    finally:
        os.kill(escaped, 9)


def test_background_program_does_not_hold_the_request(server: ExecServer) -> None:
    # Like launching a GUI program with `app &`: it keeps stdout open.
    started = time.monotonic()
    body = _exec(server, "sleep 30 & echo $!", timeout=20)
    elapsed = time.monotonic() - started
    pid = int(str(body["stdout"]).strip())
    try:
        assert body["exit_code"] == 0
        assert body["timed_out"] is False
        assert elapsed < 3, f"returned after {elapsed:.1f} s"
        assert not _gone(pid, within=0.3), "the background program was killed"
    finally:
        os.kill(pid, 9)


def test_ten_megabytes_of_output_are_truncated_promptly(server: ExecServer) -> None:
    rss_before = server.rss_kib()
    started = time.monotonic()
    body = _exec(
        server,
        f"head -c {TEN_MB} /dev/zero | tr '\\0' a & head -c {TEN_MB} /dev/zero | tr '\\0' b >&2;"
        " wait",
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"10 MB of output took {elapsed:.1f} s"
    assert body["truncated"] is True
    assert body["exit_code"] == 0
    assert body["stdout_bytes"] == TEN_MB
    assert body["stderr_bytes"] == TEN_MB
    for name, char in (("stdout", "a"), ("stderr", "b")):
        text = str(body[name])
        assert text.startswith(char * MIB)
        marker = text[MIB:]
        assert re.fullmatch(
            rf"\n\[output truncated: {TEN_MB - MIB} more bytes not shown\]\n", marker
        )
    grown_mib = (server.rss_kib() - rss_before) / 1024
    print(f"10 MB x2 output: {elapsed * 1000:.0f} ms, server RSS grew {grown_mib:.1f} MiB")
    assert grown_mib < 40


def test_output_cap_is_configurable(start_server: Callable[..., ExecServer]) -> None:
    server = start_server(SANDBOX_EXEC_MAX_OUTPUT="10")
    body = _exec(server, "echo 0123456789abcdef")
    assert body["truncated"] is True
    assert str(body["stdout"]).startswith("0123456789\n[output truncated: 7 more bytes")


def test_long_command_does_not_block_others(server: ExecServer) -> None:
    results: list[dict[str, object]] = []
    running = server.home / f"slow-{uuid.uuid4().hex[:8]}"
    slow = threading.Thread(
        target=lambda: results.append(_exec(server, f"touch {running}; sleep 3; echo slow"))
    )
    slow.start()
    # Until the server is busy with the slow command.
    deadline = time.monotonic() + 10
    while not running.exists():
        assert time.monotonic() < deadline, "the slow command never started"
        time.sleep(0.02)
    started = time.monotonic()
    assert _exec(server, "echo fast")["stdout"] == "fast\n"
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert time.monotonic() - started < 1.5
    slow.join(10)
    assert results and results[0]["stdout"] == "slow\n"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "'command' must be a non-empty string"),
        ({"command": ""}, "'command' must be a non-empty string"),
        ({"command": 42}, "'command' must be a non-empty string"),
        ({"command": "true", "timeout": 0}, "'timeout' must be > 0"),
        ({"command": "true", "timeout": -1}, "'timeout' must be > 0"),
        ({"command": "true", "timeout": 99999}, "'timeout' must be > 0 and <= 3600"),
        ({"command": "true", "timeout": True}, "'timeout' must be a number"),
        ({"command": "true", "timeout": "5"}, "'timeout' must be a number"),
        ({"command": "true", "cwd": "/no/such/dir"}, "cwd is not a directory"),
        ({"command": "true", "cwd": ["x"]}, "'cwd' must be a string"),
    ],
)
def test_bad_exec_requests_get_a_clear_400(
    server: ExecServer, payload: dict[str, object], message: str
) -> None:
    with server.client() as client:
        response = client.post("/exec", json=payload)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_malformed_bodies(server: ExecServer) -> None:
    with server.client() as client:
        not_json = client.post("/exec", content=b"{nope")
        assert not_json.status_code == 400
        assert "not valid JSON" in not_json.json()["error"]
        array = client.post("/exec", json=["echo"])
        assert array.status_code == 400
        assert "JSON object" in array.json()["error"]
        huge = client.post("/exec", content=b" " * (2 * MIB))
        assert huge.status_code == 413
        # The connection is still usable (or cleanly reopened) afterwards.
        assert client.post("/exec", json={"command": "echo ok"}).json()["stdout"] == "ok\n"


def test_unknown_route_and_wrong_method(server: ExecServer) -> None:
    with server.client() as client:
        missing = client.get("/nope")
        assert missing.status_code == 404
        assert "no such endpoint" in missing.json()["error"]
        wrong = client.get("/exec")
        assert wrong.status_code == 405
        assert "use POST" in wrong.json()["error"]
        assert client.delete("/files", params={"path": "x"}).status_code == 405


def test_stalled_client_is_dropped_and_others_are_served(
    start_server: Callable[..., ExecServer],
) -> None:
    server = start_server(SANDBOX_EXEC_IO_TIMEOUT="1")
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        assert _exec(server, "echo meanwhile")["stdout"] == "meanwhile\n"
        started = time.monotonic()
        assert stalled.recv(1024) == b""  # closed by the server, no answer
        assert time.monotonic() - started < 5


# --- files ---------------------------------------------------------------------


def test_binary_upload_download_round_trip(server: ExecServer) -> None:
    payload = bytes(range(256)) * 16 + os.urandom(3 * MIB) + b"\r\n\x00tail"
    target = server.home / "new" / "nested dir" / "blob.bin"
    with server.client() as client:
        put = client.put("/files", params={"path": str(target)}, content=payload)
        assert put.status_code == 201, put.text
        assert put.json() == {"path": str(target), "size": len(payload)}
        assert target.read_bytes() == payload
        got = client.get("/files", params={"path": str(target)})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.content == payload
    assert not [p for p in target.parent.iterdir() if p.name != "blob.bin"], "temp file left"


def test_relative_paths_are_under_home_and_overwrite_works(server: ExecServer) -> None:
    with server.client() as client:
        assert (
            client.put("/files", params={"path": "notes/a.txt"}, content=b"one").status_code == 201
        )
        assert client.put("/files", params={"path": "notes/a.txt"}, content=b"2").status_code == 201
        assert client.get("/files", params={"path": "notes/a.txt"}).content == b"2"
        empty = client.put("/files", params={"path": "empty"}, content=b"")
        assert empty.status_code == 201
        assert client.get("/files", params={"path": "empty"}).content == b""
    assert (server.home / "notes" / "a.txt").read_bytes() == b"2"


def test_uploaded_file_is_visible_to_commands(server: ExecServer) -> None:
    with server.client() as client:
        client.put("/files", params={"path": "script.sh"}, content=b"echo from-file\n")
    assert _exec(server, "sh script.sh")["stdout"] == "from-file\n"


def test_missing_file_is_404(server: ExecServer) -> None:
    with server.client() as client:
        response = client.get("/files", params={"path": str(server.home / "absent.txt")})
        assert response.status_code == 404
        assert "no such file" in response.json()["error"]
        under_file = client.get("/files", params={"path": "/etc/hostname/x"})
        assert under_file.status_code == 404


def test_bad_file_requests(server: ExecServer) -> None:
    fifo = server.home / "fifo"
    os.mkfifo(fifo)
    (server.home / "plain").write_bytes(b"x")
    with server.client(timeout=10) as client:
        assert client.get("/files").status_code == 400
        assert client.get("/files", params={"path": ""}).status_code == 400
        directory = client.get("/files", params={"path": str(server.home)})
        assert directory.status_code == 400
        assert "not a regular file" in directory.json()["error"]
        # Opening a FIFO for reading would block forever without O_NONBLOCK.
        assert client.get("/files", params={"path": str(fifo)}).status_code == 400
        onto_dir = client.put("/files", params={"path": str(server.home)}, content=b"x")
        assert onto_dir.status_code == 400
        below_file = client.put("/files", params={"path": "plain/child"}, content=b"x")
        assert below_file.status_code == 400
        assert "not a directory" in below_file.json()["error"]


def test_upload_limit(start_server: Callable[..., ExecServer]) -> None:
    server = start_server(SANDBOX_EXEC_MAX_UPLOAD="1000")
    with server.client() as client:
        too_big = client.put("/files", params={"path": "big"}, content=b"x" * 1001)
        assert too_big.status_code == 413
        assert "exceeds 1000" in too_big.json()["error"]
        assert client.put("/files", params={"path": "ok"}, content=b"x" * 1000).status_code == 201
    assert not (server.home / "big").exists()
