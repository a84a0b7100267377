"""Messages of the provisioner: leasing, releasing and reaching sandbox desktops.

A session leases a desktop (``agent.provisioner.lease``), services that drive
or show it ask for its connection details (``agent.provisioner.connect``), and
the session gives it back (``agent.provisioner.release``). What happens to
sandboxes is published as :data:`SandboxEvent` on
``agent.provisioner.event.<kind>``. Secrets (the VNC password and the exec
token) travel only in the :class:`SandboxEndpoint` reply, never in an event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from .messages import Message, Reply, SubjectId


def _now() -> datetime:
    return datetime.now(UTC)


class LeaseRequest(Message):
    """Give this session a desktop; the reply comes once it is ready to use.

    Asking again for a session that holds a desktop returns the same one (and
    counts as activity, so it is not released as idle). The reply can take the
    provisioner's capacity wait plus a desktop start: give the request a
    timeout to match (two minutes is safe with the defaults).
    """

    session_id: SubjectId


class Lease(Reply):
    sandbox_id: str = ""
    session_id: str = ""
    screen_width: int = 0
    screen_height: int = 0
    warm: bool = Field(
        default=False, description="True when the desktop came ready-made from the warm pool"
    )
    home: str = Field(default="", description="The session's home (volume or directory name)")
    host: str = Field(default="", description="The provisioner host that runs the desktop")
    wait_ms: float = Field(
        default=0.0, description="Time from the request to the reply, waiting for capacity included"
    )


class ReleaseRequest(Message):
    """The session is done with its desktop. Its home is kept unless ``keep_home`` is false."""

    session_id: SubjectId
    keep_home: bool = True


class Released(Reply):
    session_id: str = ""
    sandbox_id: str | None = Field(
        default=None, description="The desktop that was stopped; null if the session held none"
    )
    home_deleted: bool = False


class ConnectRequest(Message):
    """How to reach a desktop: name the sandbox, or the session that holds one (exactly one)."""

    sandbox_id: SubjectId | None = None
    session_id: SubjectId | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ConnectRequest:
        if (self.sandbox_id is None) == (self.session_id is None):
            raise ValueError("give exactly one of sandbox_id and session_id")
        return self


class SandboxEndpoint(Reply):
    """How to reach a leased sandbox, secrets included: a reply only, never published.

    The secret fields are left out of ``repr`` so a logged reply shows none.
    """

    sandbox_id: str = ""
    session_id: str | None = None
    vnc_host: str = ""
    vnc_port: int = 0
    vnc_password: str = Field(default="", repr=False)
    exec_url: str = ""
    exec_token: str = Field(default="", repr=False)
    screen_width: int = 0
    screen_height: int = 0


class StatusRequest(Message):
    pass


class SandboxInfo(Message):
    """One sandbox as the provisioner sees it (no secrets)."""

    sandbox_id: str
    state: Literal["starting", "warm", "leased", "stopping"]
    session_id: str | None = None
    home: str = ""
    started_at: datetime | None = None
    host: str = Field(default="", description="The provisioner host that runs it")


class ProvisionerStatus(Reply):
    """One host's sandboxes; asked on the shared subject, every live host's (``hosts``)."""

    host: str = ""
    backend: str = ""
    max_per_host: int = 0
    warm_target: int = 0
    waiting: int = Field(default=0, description="Lease requests waiting for capacity")
    sandboxes: list[SandboxInfo] = Field(default_factory=list)
    hosts: list[str] = Field(
        default_factory=list,
        description="The hosts whose sandboxes are listed (several when asked on the shared "
        "subject with more than one provisioner); empty from an older provisioner",
    )


class HostSandbox(Message):
    """A sandbox a host runs, named in its capacity announcement (no secrets)."""

    sandbox_id: str
    session_id: str | None = Field(default=None, description="The session holding it, if leased")


class HostCapacity(Message):
    """One provisioner's capacity, on ``agent.provisioner.capacity`` every few seconds and on
    every change. A host not heard from for ``3 * interval`` seconds counts as gone."""

    host: str = Field(description="The provisioner's host name")
    instance: str = Field(
        default="", description="This run of the provisioner (two claiming one host name show)"
    )
    free: int = Field(ge=0, description="Places a new desktop could take now (max minus in use)")
    warm: int = Field(ge=0, description="Warm desktops ready for a new session")
    starting: int = Field(ge=0, description="Desktops starting")
    leased: int = Field(ge=0, description="Desktops held by sessions")
    max: int = Field(ge=0, description="Desktops at most (PROVISIONER_MAX_PER_HOST)")
    waiting: int = Field(default=0, ge=0, description="Lease requests waiting for a place")
    stopping: bool = Field(
        default=False, description="The provisioner is stopping: send it nothing new"
    )
    interval: float = Field(default=2.0, gt=0, description="Seconds between announcements")
    sandboxes: list[HostSandbox] = Field(
        default_factory=list, description="Its sandboxes, so a session's requests find its host"
    )
    at: datetime = Field(default_factory=_now)


# --- events (agent.provisioner.event.<kind>) --------------------------------


class _SandboxEvent(Message):
    sandbox_id: str
    host: str
    at: datetime = Field(default_factory=_now)


class SandboxReady(_SandboxEvent):
    """A desktop finished starting: for the warm pool (no session yet) or for a session."""

    kind: Literal["sandbox.ready"] = "sandbox.ready"
    session_id: str | None = None
    start_ms: float


class SandboxLeased(_SandboxEvent):
    kind: Literal["sandbox.leased"] = "sandbox.leased"
    session_id: str
    warm: bool


class SandboxReleased(_SandboxEvent):
    kind: Literal["sandbox.released"] = "sandbox.released"
    session_id: str | None = None
    reason: Literal["released", "idle", "shutdown", "evicted"] = "released"
    home_kept: bool = True
    detail: str = Field(
        default="", description="Why, in words, when the reason alone does not say it"
    )


class SandboxLost(_SandboxEvent):
    """A desktop died or could not be started; ``reason`` says what was seen."""

    kind: Literal["sandbox.lost"] = "sandbox.lost"
    session_id: str | None = None
    reason: str


SandboxEvent = Annotated[
    SandboxReady | SandboxLeased | SandboxReleased | SandboxLost,
    Field(discriminator="kind"),
]
