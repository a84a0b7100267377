"""What a checker sees of a session's desktop: its exec endpoint, and readings made through it.

Setup and checks go through the sandbox's own exec endpoint (the same one the
actuator's shell action uses), never through the model's actions, so a check
reads the desktop as it is, whatever the agent did.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from selfagent.actuator.sandbox_exec import SandboxExec, ShellResult
from selfagent.errors import SandboxExecError

# Read Firefox's history from copies: a running Firefox holds places.sqlite
# locked and keeps recent visits in its write-ahead log, which the copy
# carries along. Python's sqlite3 is in the sandbox image; the sqlite3 CLI is not.
_FIREFOX_HISTORY = r"""
import glob, json, os, shutil, sqlite3, tempfile
urls = []
for db in glob.glob(os.path.expanduser("~/.mozilla/firefox/*/places.sqlite")):
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):
            if os.path.exists(db + suffix):
                shutil.copy(db + suffix, os.path.join(tmp, "places.sqlite" + suffix))
        con = sqlite3.connect(os.path.join(tmp, "places.sqlite"))
        try:
            urls += [r[0] for r in con.execute(
                "SELECT p.url FROM moz_historyvisits v JOIN moz_places p ON p.id = v.place_id "
                "ORDER BY v.visit_date")]
        finally:
            con.close()
print(json.dumps(urls))
"""


@dataclass
class Desktop:
    """One session's desktop, through its exec endpoint."""

    exec: SandboxExec
    home: str = ""

    async def sh(self, command: str, timeout: float = 30.0) -> ShellResult:
        return await self.exec.run(command, None, timeout)

    async def ok(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command``; its output, or :class:`SandboxExecError` when it fails."""
        result = await self.sh(command, timeout)
        if result.exit_code != 0:
            raise SandboxExecError(
                f"{command[:80]!r} exited with {result.exit_code}: {result.stderr.strip()[:300]}"
            )
        return result.stdout

    async def resolve_home(self) -> str:
        self.home = (await self.ok('printf %s "$HOME"')).strip()
        return self.home

    def path(self, relative: str) -> str:
        """A path under the desktop user's home (``~/x`` or ``x``)."""
        return f"{self.home}/{relative.removeprefix('~/')}"

    async def read(self, relative: str) -> str | None:
        """A file's text, or None when it does not exist (or is not a file)."""
        result = await self.sh(f"cat -- {shlex.quote(self.path(relative))}")
        return result.stdout if result.exit_code == 0 else None

    async def exists(self, relative: str, kind: str = "e") -> bool:
        """``test -<kind>``: e exists, f file, d directory, x executable."""
        result = await self.sh(f"test -{kind} {shlex.quote(self.path(relative))}")
        return result.exit_code == 0

    async def windows(self) -> list[str]:
        """The titles of the visible windows."""
        result = await self.sh("xdotool search --onlyvisible --name . getwindowname %@")
        return [line for line in result.stdout.splitlines() if line.strip()]

    async def active_window(self) -> str:
        result = await self.sh("xdotool getactivewindow getwindowname")
        return result.stdout.strip()

    async def xfconf(self, channel: str, prop: str) -> str | None:
        result = await self.sh(f"xfconf-query -c {shlex.quote(channel)} -p {shlex.quote(prop)}")
        return result.stdout.strip() if result.exit_code == 0 else None

    async def gsettings(self, schema: str, key: str) -> str | None:
        result = await self.sh(f"gsettings get {shlex.quote(schema)} {shlex.quote(key)}")
        return result.stdout.strip() if result.exit_code == 0 else None

    async def firefox_history(self) -> list[str]:
        """Every URL Firefox recorded a visit to, oldest first (none without a profile)."""
        out = await self.ok(f"python3 -c {shlex.quote(_FIREFOX_HISTORY)}")
        urls = json.loads(out or "[]")
        return [str(url) for url in urls]

    async def close(self) -> None:
        await self.exec.close()
