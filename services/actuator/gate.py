"""The approval gate: an action the policy asks about waits here for a person.

``check`` runs before the executor. It asks the policy (policy.py) with the
session's mode; "ask" publishes ``approval.requested`` on the session's
events and waits for a ``ControlCommand`` ``approve`` or ``deny`` with the
approval id (or the policy's timeout, which denies). Every decision is
published as ``approval.decided``: who, when, what, and the note, so it stays
in the session's history. A retried request for the same action waits on the
same approval instead of asking twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from selfagent.schemas import (
    ActRequest,
    ApprovalDecided,
    ApprovalRequested,
    ControlCommand,
    ErrorCode,
    ErrorInfo,
    subjects,
)
from selfagent.schemas.messages import ApprovalMode

from .policy import Policy

log = logging.getLogger(__name__)

Publish = Callable[[BaseModel, str], Awaitable[None]]
# A session no request names (a fixed desktop driven straight over the bus):
# its approvals can still be answered, on this session's control subject.
UNNAMED = "unknown"


@dataclass(frozen=True)
class Verdict:
    go: bool
    note: str | None = None
    error: ErrorInfo | None = None


@dataclass
class _Pending:
    approval_id: str
    session_id: str
    task_id: str
    answer: asyncio.Future[ControlCommand]


class ApprovalGate:
    def __init__(self, policy: Policy, publish: Publish) -> None:
        self.policy = policy
        self._publish = publish
        self._modes: dict[str, ApprovalMode] = {}
        self._pending: dict[str, _Pending] = {}
        self._by_action: dict[str, asyncio.Future[Verdict]] = {}

    def mode_of(self, session_id: str) -> ApprovalMode:
        return self._modes.get(session_id, self.policy.mode)

    @property
    def waiting(self) -> list[str]:
        return sorted(self._pending)

    def on_control(self, command: ControlCommand) -> None:
        if command.command == "set_mode" and command.mode is not None:
            log.info("session %s: approval mode %s", command.session_id, command.mode)
            self._modes[command.session_id] = command.mode
            return
        if command.command not in ("approve", "deny") or command.approval_id is None:
            return
        pending = self._pending.get(command.approval_id)
        if pending is None or pending.session_id != command.session_id:
            # Another actuator's, long decided, or sent for another session:
            # an approval only counts on the session it was asked in.
            return
        if not pending.answer.done():
            pending.answer.set_result(command)

    async def check(self, request: ActRequest, sandbox_id: str, session_id: str | None) -> Verdict:
        action = request.action
        session = session_id or request.session_id or UNNAMED
        decision, rule = self.policy.decide(action, self.mode_of(session))
        if decision == "allow":
            return Verdict(go=True)
        if decision == "deny":
            return Verdict(
                go=False,
                error=ErrorInfo(
                    code=ErrorCode.DENIED,
                    message=f"the approval policy never allows this ({rule})",
                ),
            )
        earlier = self._by_action.get(action.id)
        if earlier is None:
            earlier = asyncio.ensure_future(
                self._ask(request, sandbox_id, session, request.task_id or UNNAMED, rule)
            )
            self._by_action[action.id] = earlier
            earlier.add_done_callback(lambda _: self._by_action.pop(action.id, None))
        return await asyncio.shield(earlier)

    async def _ask(
        self, request: ActRequest, sandbox_id: str, session_id: str, task_id: str, rule: str
    ) -> Verdict:
        action = request.action
        approval_id = f"ap-{secrets.token_hex(8)}"
        answer: asyncio.Future[ControlCommand] = asyncio.get_running_loop().create_future()
        pending = _Pending(approval_id, session_id, task_id, answer)
        self._pending[approval_id] = pending
        x, y = getattr(action, "x", None), getattr(action, "y", None)
        timeout = self.policy.timeout
        try:
            await self._emit(
                ApprovalRequested(
                    session_id=session_id,
                    task_id=task_id,
                    approval_id=approval_id,
                    sandbox_id=sandbox_id,
                    action=action,
                    rule=rule,
                    point=(x, y) if isinstance(x, int) and isinstance(y, int) else None,
                    expires_at=datetime.now(UTC) + timedelta(seconds=timeout),
                ),
            )
            log.info("session %s: %s waits for approval (%s)", session_id, action.action, rule)
            try:
                command = await asyncio.wait_for(asyncio.shield(answer), timeout)
            except TimeoutError:
                decided = ApprovalDecided(
                    session_id=session_id,
                    task_id=task_id,
                    approval_id=approval_id,
                    decision="denied",
                    by="timeout",
                    note=f"nobody answered within {timeout:g} s",
                )
            else:
                decided = ApprovalDecided(
                    session_id=session_id,
                    task_id=task_id,
                    approval_id=approval_id,
                    decision="approved" if command.command == "approve" else "denied",
                    by=command.by or "unnamed",
                    note=command.text,
                )
        finally:
            del self._pending[approval_id]
        await self._emit(decided)
        if decided.decision == "approved":
            return Verdict(go=True, note=decided.note)
        note = f": {decided.note}" if decided.note else ""
        who = "nobody answered in time" if decided.by == "timeout" else "denied by the user"
        return Verdict(
            go=False,
            error=ErrorInfo(
                code=ErrorCode.DENIED,
                message=f"not run, {who} ({rule}){note}. The task goes on; do something else "
                "or ask the user",
            ),
        )

    async def _emit(self, event: ApprovalRequested | ApprovalDecided) -> None:
        try:
            await self._publish(event, subjects.session_event(event.session_id, event.kind))
        except Exception as exc:
            # An approval nobody can see would only time out: say why.
            log.error("could not publish %s: %s", event.kind, exc)
