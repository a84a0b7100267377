"""In-process fan-out of session events, and the desktop's takeover state.

The gateway holds one NATS subscription on all session events and hands each
event to the WebSockets and waiting chat requests that want it, instead of one
NATS subscription per browser tab.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
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


# How many recent events the hub remembers to drop a repeat: far more than
# a publisher re-sends after losing a NATS node (one queue's worth).
RECENT_EVENTS = 4096


@dataclass
class EventHub:
    listeners: set[Listener] = field(default_factory=set)
    # A publisher that lost its NATS node re-sends what the stream did not
    # acknowledge, and the first copy may have reached live subscribers
    # already; a repeat is byte for byte the same event (same ``at``).
    _recent: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

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
        digest = hashlib.blake2b(frame.text.encode(), digest_size=16).digest()
        if digest in self._recent:
            log.debug("dropped a repeated %s event of session %s", event.kind, event.session_id)
            return
        self._recent[digest] = None
        if len(self._recent) > RECENT_EVENTS:
            self._recent.popitem(last=False)
        for listener in list(self.listeners):
            if listener.wants(event):
                self._offer(listener, frame)

    def notice(self, payload: dict[str, Any], session_id: str | None = None) -> None:
        """A gateway notice for the event sockets: all of them, or those of one session."""
        frame = Frame(text=json.dumps(payload))
        for listener in list(self.listeners):
            if listener.task_id is not None or listener.kinds is not None:
                continue
            if session_id is None or listener.session_id in (None, session_id):
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
class _Holder:
    session_id: str
    since: datetime
    # The browser connection (its /ws/vnc?viewer=) whose input goes through;
    # None: taken over (the agent is paused) but nobody's input is forwarded.
    viewer: str | None = None


@dataclass
class TakeoverState:
    """Whether a person currently drives a desktop, per desktop, and from which page.

    While a desktop is taken over, the input of the one browser connection
    that took it (its viewer id, sent with the command and on ``/ws/vnc``) is
    forwarded to its VNC server; every other viewer's input is dropped so
    watching cannot disturb the agent or the person in control. A take-over
    from the bus (an automation client, the command's own echo) carries no
    viewer: it pauses the agent but unlocks nobody's input until a page
    claims it. With per-session desktops each session's desktop is taken
    over on its own; with the fixed desktop every session shares the one
    desktop, so a take-over by any session holds it and a release by any
    session frees it.

    It is kept on the bus (``agent_takeover`` bucket, see ``GatewayBus``):
    ``on_change`` is called after every change, and a restarted gateway
    ``restore``s what was saved, so a desktop taken over stays taken over,
    by the same page, across a gateway restart. Until that is read it starts
    released, erring on the side of view-only.
    """

    hub: EventHub
    per_session: bool = False
    # Keyed by desktop: the session id with per-session desktops, "" for the fixed one.
    holders: dict[str, _Holder] = field(default_factory=dict)
    changed_at: datetime | None = None
    # Replaced on every change, so a bridge can wait for "whatever changes next".
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_change: Callable[[], None] | None = None

    def _key(self, session_id: str | None) -> str:
        return (session_id or "") if self.per_session else ""

    def active_for(self, session_id: str | None) -> bool:
        """Whether the desktop of ``session_id`` is taken over (the agent must not act)."""
        if self.per_session and session_id is None:
            return False
        return self._key(session_id) in self.holders

    def input_for(self, session_id: str | None, viewer: str | None) -> bool:
        """Whether input from ``viewer``'s connection to that desktop goes through."""
        if viewer is None or (self.per_session and session_id is None):
            return False
        held = self.holders.get(self._key(session_id))
        return held is not None and held.viewer == viewer

    async def wait_change(self) -> None:
        """Until the next take-over or release (of any desktop)."""
        await self._changed.wait()

    @property
    def active(self) -> bool:
        """Whether any desktop is taken over."""
        return bool(self.holders)

    @property
    def session_id(self) -> str | None:
        """The session that took over most recently (of any desktop)."""
        if not self.holders:
            return None
        return max(self.holders.values(), key=lambda h: h.since).session_id

    def sessions(self) -> list[str]:
        return sorted(h.session_id for h in self.holders.values())

    def _held(self, session_id: str | None) -> _Holder | None:
        if session_id is None:
            if not self.holders:
                return None
            return max(self.holders.values(), key=lambda h: h.since)
        return self.holders.get(self._key(session_id))

    def holder(self, session_id: str | None) -> str | None:
        """Who holds the desktop of ``session_id`` (fixed: maybe another session)."""
        held = self._held(session_id)
        return held.session_id if held else None

    def viewer(self, session_id: str | None) -> str | None:
        """The viewer whose input reaches the desktop of ``session_id``, if any."""
        held = self._held(session_id)
        return held.viewer if held else None

    def apply(self, command: ControlCommand, viewer: str | None = None) -> bool:
        """Apply a takeover or release; whether anything changed.

        A take-over naming a viewer hands the input to it (from another viewer
        too); one naming none keeps whoever holds the desktop for that session.
        """
        if command.command not in ("takeover", "release"):
            return False
        key = self._key(command.session_id)
        held = self.holders.get(key)
        if command.command == "takeover":
            if (
                held is not None
                and held.session_id == command.session_id
                and viewer in (None, held.viewer)
            ):
                return False
            self.holders[key] = _Holder(command.session_id, datetime.now(UTC), viewer)
        else:
            if held is None:
                return False
            del self.holders[key]
        self._changed_now()
        log.info(
            "desktop %s by session %s%s",
            "taken over" if command.command == "takeover" else "released",
            command.session_id,
            f" (input from viewer {viewer})" if viewer else "",
        )
        if self.per_session:
            self.hub.notice(self.snapshot(command.session_id), session_id=command.session_id)
        else:
            self.hub.notice(self.snapshot(None))
        return True

    def _changed_now(self) -> None:
        self.changed_at = datetime.now(UTC)
        self._changed.set()
        self._changed = asyncio.Event()
        if self.on_change is not None:
            self.on_change()

    def dump(self) -> dict[str, Any]:
        """What is saved on the bus: every holder, by desktop key."""
        return {
            "holders": {
                key: {
                    "session_id": held.session_id,
                    "since": held.since.isoformat(),
                    "viewer": held.viewer,
                }
                for key, held in self.holders.items()
            }
        }

    def restore(self, saved: dict[str, Any], released: Callable[[str, datetime], bool]) -> int:
        """Take back what ``dump`` saved before a restart; how many desktops are held.

        Only while nothing has changed here since the start: a command that
        arrived first is newer. ``released(session_id, since)`` says whether
        that session was released after ``since`` while no gateway listened;
        such a holder is dropped. Notices go out as for any change.
        """
        if self.changed_at is not None:
            return len(self.holders)
        restored = 0
        for key, raw in dict(saved.get("holders") or {}).items():
            try:
                held = _Holder(
                    session_id=str(raw["session_id"]),
                    since=datetime.fromisoformat(str(raw["since"])),
                    viewer=None if raw.get("viewer") is None else str(raw["viewer"]),
                )
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable saved take-over for desktop %r; ignored", key)
                continue
            if released(held.session_id, held.since):
                continue
            self.holders[str(key)] = held
            restored += 1
        if restored:
            log.info("take-over restored for sessions %s", ", ".join(self.sessions()))
            self._changed_now()
            for held in self.holders.values():
                if self.per_session:
                    self.hub.notice(self.snapshot(held.session_id), session_id=held.session_id)
            if not self.per_session:
                self.hub.notice(self.snapshot(None))
        return restored

    def snapshot(self, session_id: str | None) -> dict[str, Any]:
        """The ``gateway.takeover`` notice for a watcher of ``session_id`` (None: any).

        ``takeover`` says whether that session's desktop is taken over;
        ``session_id`` is the session holding it (with the fixed desktop it
        may be another session than the watcher's); ``viewer`` is the page
        connection whose input goes through (null: none), so each page knows
        whether it is the one in control.
        """
        takeover = self.active if session_id is None else self.active_for(session_id)
        holder = self.holder(session_id)
        return {
            "kind": TAKEOVER_KIND,
            "takeover": takeover,
            "session_id": holder if holder is not None else session_id,
            "viewer": self.viewer(session_id) if takeover else None,
            "at": (self.changed_at or datetime.now(UTC)).isoformat(),
        }
