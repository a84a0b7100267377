"""What a platform must do to run sandbox desktops: one ABC, one implementation each.

``NativeBackend`` (``native.py``) runs ``sandbox/start.sh`` as processes of
this user; ``DockerBackend`` (``docker_backend.py``) runs the sandbox image
as containers. The pool (``pool.py``) decides when and for whom; a backend
only starts, finds, checks and stops desktops and their homes.
"""

from __future__ import annotations

import abc
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

# Labels every sandbox carries (as container labels, or natively in the
# record): what it is, whose it is, and which provisioner owns it.
LABEL_SANDBOX = "selfagent.sandbox"
LABEL_SANDBOX_ID = "selfagent.sandbox-id"
LABEL_SESSION = "selfagent.session"
LABEL_HOST = "selfagent.host"
LABEL_HOME = "selfagent.home"

HOME_PREFIX = "selfagent-home-"


def home_name(owner: str) -> str:
    """The home of a session (or of a warm sandbox, bound to a session when leased)."""
    return f"{HOME_PREFIX}{owner}"


def new_sandbox_id() -> str:
    return f"sb-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Endpoint:
    vnc_host: str
    vnc_port: int
    exec_url: str


@dataclass(frozen=True)
class Secrets:
    """Per-sandbox secrets. Never logged (no repr), never in a label or an event."""

    vnc_password: str = field(repr=False)
    exec_token: str = field(repr=False)

    @classmethod
    def generate(cls) -> Secrets:
        # VNC authentication (DES) uses at most 8 characters of a password:
        # 8 URL-safe characters are 48 random bits, all of which count.
        return cls(vnc_password=secrets.token_urlsafe(6)[:8], exec_token=secrets.token_urlsafe(32))


@dataclass(frozen=True)
class SandboxHandle:
    sandbox_id: str
    session_id: str | None
    home: str
    endpoint: Endpoint
    secrets: Secrets = field(repr=False)
    labels: dict[str, str]
    started_at: datetime
    screen: tuple[int, int]
    # The backend's own reference: a container id, or the start script's pid.
    ref: str

    def bound_to(self, session_id: str) -> SandboxHandle:
        labels = {**self.labels, LABEL_SESSION: session_id}
        return replace(self, session_id=session_id, labels=labels)

    def record(self, backend: str, **extra: Any) -> dict[str, Any]:
        """What the state store keeps to adopt this sandbox after a restart."""
        return {
            "backend": backend,
            "sandbox_id": self.sandbox_id,
            "session_id": self.session_id,
            "home": self.home,
            "vnc_host": self.endpoint.vnc_host,
            "vnc_port": self.endpoint.vnc_port,
            "exec_url": self.endpoint.exec_url,
            "vnc_password": self.secrets.vnc_password,
            "exec_token": self.secrets.exec_token,
            "labels": self.labels,
            "started_at": self.started_at.isoformat(),
            "screen": list(self.screen),
            "ref": self.ref,
            **extra,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SandboxHandle:
        return cls(
            sandbox_id=record["sandbox_id"],
            session_id=record.get("session_id"),
            home=record["home"],
            endpoint=Endpoint(record["vnc_host"], int(record["vnc_port"]), record["exec_url"]),
            secrets=Secrets(record["vnc_password"], record["exec_token"]),
            labels=dict(record.get("labels") or {}),
            started_at=datetime.fromisoformat(record["started_at"]),
            screen=(int(record["screen"][0]), int(record["screen"][1])),
            ref=str(record["ref"]),
        )


def now() -> datetime:
    return datetime.now(UTC)


class SandboxBackend(abc.ABC):
    """Starts, finds, checks and stops sandbox desktops on one platform."""

    name: ClassVar[str]
    # Whether desktops outlive the provisioner by default (adopted at its
    # next start) or stop with it.
    keeps_running: ClassVar[bool]

    @property
    @abc.abstractmethod
    def host(self) -> str:
        """This provisioner's name for its host (label ``selfagent.host``), known once open."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Check the platform is usable; raise ``ConfigError`` if it cannot be."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``open`` acquired (not the sandboxes)."""

    @abc.abstractmethod
    async def create(self, sandbox_id: str, session_id: str | None, home: str) -> SandboxHandle:
        """Start a desktop with this home and return once it shows its panel.

        Generates its secrets, records it in the state store (so it can be
        adopted) and raises ``SandboxStartFailed`` after removing whatever
        it had started if the desktop does not come up.
        """

    @abc.abstractmethod
    async def bind(self, handle: SandboxHandle, session_id: str) -> SandboxHandle:
        """Hand a warm desktop to a session: record (and where possible show) the owner."""

    @abc.abstractmethod
    async def destroy(self, handle: SandboxHandle, keep_home: bool) -> None:
        """Stop the desktop, forget its record, and delete its home unless ``keep_home``."""

    @abc.abstractmethod
    async def list_existing(self) -> list[SandboxHandle]:
        """This provisioner's desktops that still run and have a record: to adopt.

        Removes what cannot be adopted on the way: desktops labelled with
        this host but without a record (orphans: their secrets are gone),
        dead ones, and records whose desktop is gone.
        """

    @abc.abstractmethod
    async def alive(self, handle: SandboxHandle) -> bool:
        """Whether the desktop still runs and its VNC server is there."""

    async def why_dead(self, handle: SandboxHandle) -> str:
        """What is known about a desktop that is not alive, for ``sandbox.lost``."""
        return "the desktop stopped"

    @abc.abstractmethod
    async def delete_home(self, session_id: str) -> bool:
        """Delete the session's home (and its binding); False if it had none."""
