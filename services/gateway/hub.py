"""In-process fan-out of session events, and the desktop's takeover state.

The gateway holds one NATS subscription on all session events and hands each
event to the WebSockets and waiting chat requests that want it, instead of one
NATS subscription per browser tab.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from selfagent.schemas import ControlCommand, SessionEvent

log = logging.getLogger(__name__)

SESSION_EVENT: TypeAdapter[SessionEvent] = TypeAdapter(SessionEvent)

# Frames the gateway adds to the event stream itself; the prefix keeps them
# apart from the planner's event kinds.
TAKEOVER_KIND = "gateway.takeover"


@dataclass(frozen=True)
class Frame:
    """One item for a listener: the parsed event (None for gateway notices) and its JSON."""

    text: str
    event: SessionEvent | None = None


@dataclass(eq=False)
class Listener:
    session_id: str | None
    task_id: str | None
    kinds: frozenset[str] | None
    queue: asyncio.Queue[Frame]
    overflowed: bool = False

    def wants(self, event: SessionEvent) -> bool:
        if self.session_id is not None and event.session_id != self.session_id:
            return False
        if self.task_id is not None and event.task_id != self.task_id:
            return False
        return self.kinds is None or event.kind in self.kinds


@dataclass
class EventHub:
    listeners: set[Listener] = field(default_factory=set)

    @contextmanager
    def listen(
        self,
        session_id: str | None = None,
        task_id: str | None = None,
        kinds: frozenset[str] | None = None,
        maxsize: int = 2000,
    ) -> Iterator[Listener]:
        listener = Listener(session_id, task_id, kinds, asyncio.Queue(maxsize))
        self.listeners.add(listener)
        try:
            yield listener
        finally:
            self.listeners.discard(listener)

    def dispatch(self, event: SessionEvent) -> None:
        frame = Frame(text=event.model_dump_json(), event=event)
        for listener in list(self.listeners):
            if listener.wants(event):
                self._offer(listener, frame)

    def notice(self, payload: dict[str, Any]) -> None:
        frame = Frame(text=json.dumps(payload))
        for listener in list(self.listeners):
            if listener.task_id is None and listener.kinds is None:
                self._offer(listener, frame)

    @staticmethod
    def _offer(listener: Listener, frame: Frame) -> None:
        # A stalled browser must not hold events back from everyone else (or
        # grow memory without bound): it is cut off and reconnects.
        try:
            listener.queue.put_nowait(frame)
        except asyncio.QueueFull:
            listener.overflowed = True


@dataclass
class TakeoverState:
    """Whether a person currently drives the sandbox desktop.

    Global for the sandbox: while anyone has taken over, browsers' input is
    forwarded to the VNC server; otherwise it is dropped so watching cannot
    disturb the agent. Starts released, so a gateway restart errs on the side
    of view-only.
    """

    hub: EventHub
    active: bool = False
    session_id: str | None = None
    changed_at: datetime | None = None

    def apply(self, command: ControlCommand) -> bool:
        if command.command not in ("takeover", "release"):
            return False
        active = command.command == "takeover"
        if active == self.active and (not active or command.session_id == self.session_id):
            return False
        self.active = active
        self.session_id = command.session_id if active else None
        self.changed_at = datetime.now(UTC)
        log.info(
            "desktop %s by session %s", "taken over" if active else "released", command.session_id
        )
        self.hub.notice(self.snapshot())
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": TAKEOVER_KIND,
            "takeover": self.active,
            "session_id": self.session_id,
            "at": (self.changed_at or datetime.now(UTC)).isoformat(),
        }
