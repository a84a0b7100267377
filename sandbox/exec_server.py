#!/usr/bin/env python3
"""Authenticated shell and file endpoint of a sandbox desktop.

Runs as the desktop user, next to Xvnc and the Xfce session, so commands it
starts (including GUI programs) land on the sandbox display. Standard library
only: the sandbox image has Debian's python3 and no pip.

    POST /exec         {"command", "cwd"?, "timeout"?}
                       -> {"exit_code", "stdout", "stderr", "timed_out",
                           "truncated", "duration_ms"}
    PUT  /files?path=  raw request body -> the file (parent dirs created)
    GET  /files?path=  the file's raw bytes (404 when missing)
    GET  /list?path=   a directory's entries (recursive=1: the tree below, bounded)
    GET  /healthz      no authentication

With ``confine=1`` (what the gateway sends for a person's transfers) a path
must stay inside the desktop user's home once symlinks are followed: no
``..``, no link that leads out.

Every route but /healthz wants `Authorization: Bearer <SANDBOX_EXEC_TOKEN>`.

Environment:
    SANDBOX_EXEC_TOKEN        required; the server refuses to start without it
    SANDBOX_EXEC_HOST         listen address               (default 127.0.0.1)
    SANDBOX_EXEC_PORT         listen port                  (default 8700)
    SANDBOX_EXEC_MAX_OUTPUT   bytes kept per stream        (default 1 MiB)
    SANDBOX_EXEC_MAX_TIMEOUT  longest allowed command, s   (default 3600)
    SANDBOX_EXEC_MAX_UPLOAD   largest accepted upload      (default 512 MiB)
    SANDBOX_EXEC_IO_TIMEOUT   idle socket timeout, s       (default 60)
    DISPLAY                   display for commands         (default :1)
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024
MAX_JSON_BODY = 1024 * 1024
# A listing stops here: enough to find what a task made, bounded for a huge home.
LIST_LIMIT = 2000
LIST_DEPTH = 4
# Output still arriving right after the shell exits belongs to this command;
# anything later comes from programs it left running in the background.
EXIT_LINGER = 0.2
# Environment that must not reach commands run on behalf of the agent.
PRIVATE_ENV = ("SANDBOX_EXEC_TOKEN", "VNC_PASSWORD")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    token: str
    host: str
    port: int
    max_output: int
    max_timeout: float
    max_upload: int
    io_timeout: float
    display: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Config:
        token = env.get("SANDBOX_EXEC_TOKEN", "")
        if not token.strip():
            raise ConfigError("SANDBOX_EXEC_TOKEN is not set; refusing to start an open endpoint")
        return cls(
            token=token,
            host=env.get("SANDBOX_EXEC_HOST", "127.0.0.1"),
            port=_int_env(env, "SANDBOX_EXEC_PORT", 8700, 1, 65535),
            max_output=_int_env(env, "SANDBOX_EXEC_MAX_OUTPUT", 1024 * 1024, 1, 1 << 30),
            max_timeout=float(_int_env(env, "SANDBOX_EXEC_MAX_TIMEOUT", 3600, 1, 86400)),
            max_upload=_int_env(env, "SANDBOX_EXEC_MAX_UPLOAD", 512 * 1024 * 1024, 0, 1 << 40),
            io_timeout=float(_int_env(env, "SANDBOX_EXEC_IO_TIMEOUT", 60, 1, 3600)),
            display=env.get("DISPLAY") or ":1",
        )


def _confined(query: dict[str, list[str]]) -> bool:
    return (query.get("confine") or ["0"])[0] == "1"


def _int_env(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- running commands --------------------------------------------------------


@dataclass
class _Capture:
    limit: int
    data: bytearray
    total: int = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        omitted = self.total - len(self.data)
        if omitted > 0:
            out += f"\n[output truncated: {omitted} more bytes not shown]\n"
        return out

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


def _drain_forever(fds: list[int]) -> None:
    """Keep reading pipes that background programs still hold, so they never
    block on a full pipe nor die of SIGPIPE, and close them at EOF."""
    sel = selectors.DefaultSelector()
    for fd in fds:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            for key, _ in sel.select():
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    os.close(fd)
    finally:
        sel.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_command(
    command: str, cwd: str, timeout: float, max_output: int, env: dict[str, str]
) -> dict[str, Any]:
    started = time.monotonic()
    # Own session and process group: a timeout must take down everything the
    # command started, not just the shell.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # Raw fds from here on: the pipes may outlive this request (see
    # _drain_forever), so their file objects must not close them.
    out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
    proc.stdout.close()
    proc.stderr.close()
    stdout, stderr = _Capture(max_output, bytearray()), _Capture(max_output, bytearray())
    captures = {out_fd: stdout, err_fd: stderr}

    deadline = started + timeout
    timed_out = False
    linger_until: float | None = None
    sel = selectors.DefaultSelector()
    for fd in captures:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    try:
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                if not sel.get_map():
                    break
                if linger_until is None:
                    linger_until = now + EXIT_LINGER
                elif now >= linger_until:
                    break
            elif now >= deadline:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
                continue
            if not sel.get_map():
                # Both pipes closed but the shell lives on: just wait for it.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.01, min(deadline - now, 0.5)))
                continue
            wake = linger_until if linger_until is not None else min(deadline, now + 0.05)
            for key, _ in sel.select(max(0.001, wake - now)):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if chunk:
                    captures[fd].add(chunk)
                else:
                    sel.unregister(fd)
                    os.close(fd)
    finally:
        still_open = [int(k.fd) for k in sel.get_map().values()]
        sel.close()
        if still_open:
            for fd in still_open:
                os.set_blocking(fd, True)
            threading.Thread(target=_drain_forever, args=(still_open,), daemon=True).start()
        if proc.poll() is None:
            # Only reached when something above raised; never leave the group.
            _kill_group(proc.pid)
            proc.wait()

    code = proc.returncode
    return {
        # Killed by a signal: report it the way a shell would (128 + signal).
        "exit_code": None if timed_out else (code if code >= 0 else 128 - code),
        "stdout": stdout.text(),
        "stderr": stderr.text(),
        "timed_out": timed_out,
        "truncated": stdout.truncated or stderr.truncated,
        "stdout_bytes": stdout.total,
        "stderr_bytes": stderr.total,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }


# --- HTTP --------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    _body_read = False
    server_version = "selfagent-sandbox-exec"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # A client that stops sending mid-request must not hold a thread forever.
        self.connection.settimeout(self.server.config.io_timeout)

    # routing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        url = urlsplit(self.path)
        routes: dict[str, dict[str, Callable[[dict[str, list[str]]], None]]] = {
            "/healthz": {"GET": self._healthz},
            "/exec": {"POST": self._exec},
            "/files": {"GET": self._get_file, "PUT": self._put_file},
            "/list": {"GET": self._list},
        }
        try:
            allowed = routes.get(url.path)
            if allowed is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}")
            handler = allowed.get(method)
            if handler is None:
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{method} is not allowed on {url.path} (use {', '.join(allowed)})",
                )
            if url.path != "/healthz":
                self._authenticate()
            handler(parse_qs(url.query))
        except RequestError as exc:
            self._send_json(exc.status, {"error": exc.message})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # keep the server up whatever one request does
            self.log_error("internal error: %r", exc)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc}"})

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        expected = self.server.config.token.encode()
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
        if not ok:
            raise RequestError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")

    # endpoints

    def _healthz(self, _query: dict[str, list[str]]) -> None:
        self._send_json(HTTPStatus.OK, {"status": "ok"})

    def _exec(self, _query: dict[str, list[str]]) -> None:
        config = self.server.config
        body = self._read_json()
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise RequestError(HTTPStatus.BAD_REQUEST, "'command' must be a non-empty string")
        if "\x00" in command:
            raise RequestError(HTTPStatus.BAD_REQUEST, "'command' must not contain NUL bytes")
        timeout = body.get("timeout", DEFAULT_TIMEOUT)
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'timeout' must be a number of seconds")
        if not 0 < timeout <= config.max_timeout:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"'timeout' must be > 0 and <= {config.max_timeout:g} seconds, got {timeout}",
            )
        cwd = body.get("cwd") or str(Path.home())
        if not isinstance(cwd, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'cwd' must be a string")
        cwd_path = self._resolve(cwd)
        if not cwd_path.is_dir():
            raise RequestError(HTTPStatus.BAD_REQUEST, f"cwd is not a directory: {cwd_path}")
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        env["DISPLAY"] = config.display
        result = run_command(command, str(cwd_path), float(timeout), config.max_output, env)
        self._send_json(HTTPStatus.OK, result)

    def _get_file(self, query: dict[str, list[str]]) -> None:
        path = self._resolve(self._path_param(query), _confined(query))
        try:
            # O_NONBLOCK so that opening a FIFO cannot hang the request.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such file: {path}") from None
        except PermissionError:
            raise RequestError(HTTPStatus.FORBIDDEN, f"permission denied: {path}") from None
        except NotADirectoryError:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such file: {path}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RequestError(HTTPStatus.BAD_REQUEST, f"not a regular file: {path}")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            remaining = size
            # Send exactly the announced length even if the file grows meanwhile.
            while remaining > 0:
                chunk = handle.read(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
            if remaining:
                # The file shrank under us; the response cannot be completed.
                self.close_connection = True

    def _put_file(self, query: dict[str, list[str]]) -> None:
        path = self._resolve(self._path_param(query), _confined(query))
        length = self._content_length(self.server.config.max_upload)
        if path.is_dir():
            raise RequestError(HTTPStatus.BAD_REQUEST, f"is a directory: {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename: readers never see half a file.
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".up")
        except PermissionError:
            raise RequestError(HTTPStatus.FORBIDDEN, f"permission denied: {path}") from None
        except (FileExistsError, NotADirectoryError):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"a parent of {path} is not a directory"
            ) from None
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(READ_CHUNK, remaining))
                    if not chunk:
                        raise RequestError(
                            HTTPStatus.BAD_REQUEST,
                            f"body ended after {length - remaining} of {length} bytes",
                        )
                    out.write(chunk)
                    remaining -= len(chunk)
            self._body_read = True
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException:
            self.close_connection = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        self._send_json(HTTPStatus.CREATED, {"path": str(path), "size": length})

    # helpers

    def _path_param(self, query: dict[str, list[str]]) -> str:
        values = query.get("path", [])
        if len(values) != 1 or not values[0]:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "give exactly one non-empty 'path' parameter"
            )
        if "\x00" in values[0]:
            raise RequestError(HTTPStatus.BAD_REQUEST, "'path' must not contain NUL bytes")
        return values[0]

    @staticmethod
    def _resolve(raw: str, confine: bool = False) -> Path:
        if not confine:
            path = Path(raw).expanduser()
            # Relative paths are relative to the desktop user's home, not to
            # wherever the server happened to be started.
            return path if path.is_absolute() else Path.home() / path
        home = Path.home().resolve()
        given = Path(raw[2:] if raw.startswith("~/") else raw)
        if ".." in given.parts:
            raise RequestError(HTTPStatus.BAD_REQUEST, "'..' is not allowed in a path")
        path = given if given.is_absolute() else home / given
        # Following every symlink that exists: a link inside the home that
        # points out of it is refused like the path it points to.
        real = path.resolve()
        if real != home and home not in real.parents:
            raise RequestError(HTTPStatus.FORBIDDEN, f"{raw} is outside the home directory")
        return real

    def _list(self, query: dict[str, list[str]]) -> None:
        raw = (query.get("path") or ["~"])[0] or "~"
        root = self._resolve("." if raw in ("~", "~/") else raw, confine=True)
        if not root.is_dir():
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such directory: {raw}")
        recursive = (query.get("recursive") or ["0"])[0] == "1"
        home = Path.home().resolve()
        entries: list[dict[str, object]] = []
        truncated = False
        pending = [(root, 0)]
        while pending and not truncated:
            directory, depth = pending.pop(0)
            try:
                children = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            for entry in children:
                if entry.name.startswith("."):
                    continue  # settings and caches, not what the agent made
                if len(entries) >= LIST_LIMIT:
                    truncated = True
                    break
                info = entry.stat(follow_symlinks=False)
                kind = (
                    "dir"
                    if entry.is_dir(follow_symlinks=False)
                    else ("link" if entry.is_symlink() else "file")
                )
                entries.append(
                    {
                        "path": str(Path(entry.path).relative_to(home)),
                        "type": kind,
                        "size": info.st_size if kind == "file" else 0,
                        "mtime": info.st_mtime,
                    }
                )
                if recursive and kind == "dir" and depth + 1 < LIST_DEPTH:
                    pending.append((Path(entry.path), depth + 1))
        self._send_json(
            HTTPStatus.OK,
            {"path": str(root.relative_to(home)), "entries": entries, "truncated": truncated},
        )

    def _content_length(self, limit: int) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported; send Content-Length"
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command in ("POST", "PUT"):
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return 0
        try:
            length = int(raw)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {raw!r}") from None
        if length < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {raw!r}")
        if length > limit:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit}"
            )
        return length

    def _has_body(self) -> bool:
        if self.headers.get("Transfer-Encoding"):
            return True
        raw = self.headers.get("Content-Length", "0").strip()
        return raw not in ("", "0")

    def _read_json(self) -> dict[str, Any]:
        length = self._content_length(MAX_JSON_BODY)
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) != length:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "request body ended early")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        if self._has_body() and not self._body_read:
            # An unread request body would be parsed as the next request.
            self.close_connection = True
        try:
            self.send_response(status)
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Bearer realm="sandbox"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"sandbox-exec: {self.address_string()} {format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: Config) -> None:
        self.config = config
        super().__init__((config.host, config.port), Handler)


def _not_dumpable() -> None:
    """Keep the token from the desktop user, who runs as the same user: a
    non-dumpable process's /proc files (environ, mem, fd) are root's, and it
    cannot be ptraced without CAP_SYS_PTRACE, which the sandbox lacks. The
    image starts this server from an execute-only interpreter, which the
    kernel makes non-dumpable from the first instruction; this covers hosts
    whose fs.suid_dumpable setting undoes that."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_dumpable = 4
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)


def main() -> int:
    _not_dumpable()
    try:
        config = Config.from_env(dict(os.environ))
    except ConfigError as exc:
        print(f"sandbox-exec: {exc}", file=sys.stderr)
        return 2
    for name in PRIVATE_ENV:
        os.environ.pop(name, None)
    try:
        server = Server(config)
    except OSError as exc:
        print(f"sandbox-exec: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so not from its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"sandbox-exec: listening on {config.host}:{config.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
