"""Which sessions exist, and their desktops, as the gateway sees them.

A session exists while something knows it: its record in the
``agent_sessions`` KV bucket (the planner writes one when a task runs), a
desktop the provisioner leased for it (per-session desktops), or this gateway
having just started it (``POST /api/sessions``, or a task without a session
id) before any of those exists. Only the last is the gateway's own memory, so
it is small and bounded; the other two survive a gateway restart.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from selfagent.errors import BusError, RemoteError
from selfagent.schemas import (
    ConnectRequest,
    Lease,
    LeaseRequest,
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    SandboxEndpoint,
    StatusRequest,
    subjects,
)
from selfagent.schemas.messages import ErrorCode, SessionStatus

from .bus import GatewayBus
from .config import Settings

log = logging.getLogger(__name__)

# Sessions started here and not yet known elsewhere; older ones are forgotten
# first (by then the planner or the provisioner knows those that were used).
MAX_STARTED = 1000
MAX_LISTED = 200


class SessionSummary(BaseModel):
    session_id: str
    status: SessionStatus | Literal["idle"] = Field(
        description="idle: the session has no task yet (it may hold a desktop)"
    )
    sandbox_id: str | None = Field(description="Its desktop; null while it has none")
    created: datetime
    updated: datetime
    last_prompt: str | None
    steps: int


class SessionList(BaseModel):
    sessions: list[SessionSummary] = Field(description=f"Newest first, at most {MAX_LISTED}")
    desktops: Literal["fixed", "per_session"]
    complete: bool = Field(
        description="False when the session records or the provisioner did not answer in time"
    )


@dataclass
class SessionCatalog:
    settings: Settings
    bus: GatewayBus
    started: OrderedDict[str, datetime] = field(default_factory=OrderedDict)

    @property
    def per_session(self) -> bool:
        return self.settings.desktops == "per_session"

    def remember(self, session_id: str) -> None:
        self.started.setdefault(session_id, datetime.now(UTC))
        while len(self.started) > MAX_STARTED:
            self.started.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self.started.pop(session_id, None)

    # --- the provisioner ------------------------------------------------------

    async def lease(self, session_id: str) -> Lease:
        return await self.bus.ask(
            subjects.PROVISIONER_LEASE,
            LeaseRequest(session_id=session_id),
            Lease,
            self.settings.lease_timeout,
        )

    async def release(self, session_id: str, keep_home: bool) -> Released:
        return await self.bus.ask(
            subjects.PROVISIONER_RELEASE,
            ReleaseRequest(session_id=session_id, keep_home=keep_home),
            Released,
            self.settings.release_timeout,
        )

    async def endpoint(self, session_id: str) -> SandboxEndpoint | None:
        """How to reach the session's desktop; None when it holds none.

        Raises BusError when the provisioner cannot say (absent, too slow).
        """
        try:
            return await self.bus.ask(
                subjects.PROVISIONER_CONNECT,
                ConnectRequest(session_id=session_id),
                SandboxEndpoint,
                self.settings.provisioner_timeout,
            )
        except RemoteError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise

    async def status(self) -> ProvisionerStatus | None:
        try:
            return await self.bus.ask(
                subjects.PROVISIONER_STATUS,
                StatusRequest(),
                ProvisionerStatus,
                self.settings.provisioner_timeout,
            )
        except BusError as exc:
            log.warning("the provisioner's status is unavailable: %s", exc)
            return None

    # --- sessions ---------------------------------------------------------------

    async def exists(self, session_id: str) -> bool:
        """Whether the session is known (see the module's doc); BusError if that cannot be told."""
        if session_id in self.started:
            return True
        if await self.bus.session_state(session_id) is not None:
            return True
        return self.per_session and await self.endpoint(session_id) is not None

    async def listing(self) -> SessionList:
        timeout = self.settings.provisioner_timeout
        states, complete = await self.bus.session_states(timeout)
        summaries: dict[str, SessionSummary] = {}
        for state in states:
            summaries[state.session_id] = SessionSummary(
                session_id=state.session_id,
                status=state.status,
                sandbox_id=state.sandbox_id,
                created=state.submitted_at,
                updated=state.updated_at,
                last_prompt=state.prompt,
                steps=state.steps,
            )
        for session_id, at in self.started.items():
            if session_id in summaries:
                summary = summaries[session_id]
                summary.created = min(summary.created, at)
                continue
            summaries[session_id] = SessionSummary(
                session_id=session_id,
                status="idle",
                sandbox_id=self.settings.sandbox_id if not self.per_session else None,
                created=at,
                updated=at,
                last_prompt=None,
                steps=0,
            )
        if self.per_session:
            status = await self.status()
            complete = complete and status is not None
            if status is not None:
                self._merge_desktops(summaries, status)
        newest = sorted(summaries.values(), key=lambda s: (s.created, s.updated), reverse=True)
        return SessionList(
            sessions=newest[:MAX_LISTED], desktops=self.settings.desktops, complete=complete
        )

    @staticmethod
    def _merge_desktops(summaries: dict[str, SessionSummary], status: ProvisionerStatus) -> None:
        """The provisioner's leases are the truth about desktops; a record's may be stale."""
        leased = {
            info.session_id: info
            for info in status.sandboxes
            if info.session_id is not None and info.state in ("starting", "leased")
        }
        for session_id, summary in summaries.items():
            info = leased.get(session_id)
            summary.sandbox_id = info.sandbox_id if info else None
        for session_id, info in leased.items():
            if session_id in summaries:
                continue
            at = info.started_at or datetime.now(UTC)
            summaries[session_id] = SessionSummary(
                session_id=session_id,
                status="idle",
                sandbox_id=info.sandbox_id,
                created=at,
                updated=at,
                last_prompt=None,
                steps=0,
            )
