"""What the provisioner must remember across a restart, in its data directory.

    <data_dir>/sandboxes/<sandbox_id>.json   one record per running sandbox, secrets included
    <data_dir>/homes.json                    session id -> the home it is bound to

Secrets live here and not in container labels: labels are shown to anyone
who can list or inspect containers, while these files are readable by this
user only (directory 0700, files 0600, written atomically). A container
without a record here is an orphan: nobody can reach it, so it is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with a file only this user can read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # Created 0600 from the first byte: never a moment with wider permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class StateStore:
    """Sandbox records and home bindings. Thread-safe: backends write from worker threads."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.sandbox_dir = data_dir / "sandboxes"
        self.homes_file = data_dir / "homes.json"
        self._lock = threading.Lock()
        for folder in (self.root, self.sandbox_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            # mkdir's mode is masked and ignored for existing folders.
            os.chmod(folder, 0o700)

    # -- sandbox records -----------------------------------------------------

    def _record_path(self, sandbox_id: str) -> Path:
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise ValueError(f"bad sandbox id {sandbox_id!r}")
        return self.sandbox_dir / f"{sandbox_id}.json"

    def save_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            _write_private(self._record_path(sandbox_id), record)

    def sandbox(self, sandbox_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._record_path(sandbox_id).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def sandboxes(self) -> dict[str, dict[str, Any]]:
        records = {}
        for path in sorted(self.sandbox_dir.glob("*.json")):
            record = self.sandbox(path.stem)
            if record is not None:
                records[path.stem] = record
        return records

    def drop_sandbox(self, sandbox_id: str) -> None:
        with self._lock, contextlib.suppress(FileNotFoundError):
            self._record_path(sandbox_id).unlink()

    # -- home bindings -------------------------------------------------------

    def _homes(self) -> dict[str, str]:
        try:
            data = json.loads(self.homes_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def home_of(self, session_id: str) -> str | None:
        with self._lock:
            return self._homes().get(session_id)

    def homes(self) -> dict[str, str]:
        with self._lock:
            return self._homes()

    def bind_home(self, session_id: str, home: str) -> None:
        with self._lock:
            homes = self._homes()
            homes[session_id] = home
            _write_private(self.homes_file, homes)

    def unbind_home(self, session_id: str) -> str | None:
        with self._lock:
            homes = self._homes()
            home = homes.pop(session_id, None)
            if home is not None:
                _write_private(self.homes_file, homes)
            return home
