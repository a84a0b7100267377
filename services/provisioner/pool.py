"""The pool: which desktop a session gets, how many run, and when they go.

- **Warm pool.** ``warm`` desktops are kept started and ready for the next
  *new* session, refilled in the background; leasing one is a bookkeeping
  step (milliseconds), not a start (seconds).
- **Homes.** A home cannot be attached to a running desktop, so a warm
  desktop starts with a fresh home of its own (``selfagent-home-<sandbox>``)
  and the session that leases it is bound to that home from then on. A
  session that already has a home (it had a desktop before) gets a cold
  start with that home: a session's next desktop always has the same home.
- **Capacity.** At most ``max_per_host`` desktops run (warm ones included:
  a warm desktop gives its place up to a session that needs a cold start).
  A lease that finds the host full waits, in arrival order, up to
  ``lease_wait`` seconds for a release, and is then refused with
  :class:`CapacityExhausted` saying so. Waiting (instead of refusing at once)
  absorbs the common case of one task ending as another begins; the bound
  keeps a requester from hanging, and FIFO keeps a burst fair. At most
  ``max_starting`` desktops start at once (a start is CPU-bound).
- **Idle.** A leased desktop with no activity (a lease or connect for it, or
  any event of its session on the bus) for ``idle_release`` seconds is
  released with its home kept.
- **Lost.** Every ``check_interval`` seconds each desktop is checked; a dead
  one is removed and reported (``sandbox.lost``), and the warm pool refilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from selfagent.errors import CapacityExhausted, ProvisionerError, SandboxStartFailed, UnknownSandbox
from selfagent.schemas import (
    HostCapacity,
    HostSandbox,
    SandboxInfo,
    SandboxLeased,
    SandboxLost,
    SandboxReady,
    SandboxReleased,
)
from selfagent.schemas.sandboxes import SandboxEvent

from .backend import SandboxBackend, SandboxHandle, home_name, new_sandbox_id
from .state import StateStore

log = logging.getLogger(__name__)

SlotState = Literal["starting", "warm", "leased", "stopping"]
ReleaseReason = Literal["released", "idle", "shutdown", "evicted"]
Publish = Callable[[SandboxEvent], Awaitable[None]]
REFILL_BACKOFF_MAX = 60.0


@dataclass(eq=False)
class Slot:
    """One desktop, from the moment its place is taken until it is gone."""

    sandbox_id: str
    state: SlotState
    home: str
    # The session it belongs (or is promised) to; None for a warm desktop.
    session_id: str | None
    # Started for the warm pool (a lease of it is "warm").
    from_pool: bool
    handle: SandboxHandle | None = None
    ready: asyncio.Future[SandboxHandle] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    last_active: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LeaseOutcome:
    handle: SandboxHandle
    warm: bool
    wait_s: float


Choice = tuple[Literal["warm", "claimed", "cold", "replace", "own"], Slot, Slot | None]


class Pool:
    def __init__(
        self,
        backend: SandboxBackend,
        state: StateStore,
        *,
        host: str,
        warm: int = 1,
        max_per_host: int = 4,
        max_starting: int = 3,
        lease_wait: float = 30.0,
        idle_release: float = 1800.0,
        check_interval: float = 5.0,
        publish: Publish | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        self.state = state
        self.host = host
        self.warm_target = warm
        self.max_per_host = max_per_host
        self.lease_wait = lease_wait
        self.idle_release = idle_release
        self.check_interval = check_interval
        self._publish = publish
        self._on_change = on_change
        self._slots: dict[str, Slot] = {}
        self._starting = asyncio.Semaphore(max_starting)
        self._queue: deque[object] = deque()
        self._changed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[LeaseOutcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._refill_after = 0.0
        self._refill_backoff = 1.0
        self._stopping = False
        self._started = False

    # -- life ----------------------------------------------------------------

    async def start(self) -> None:
        """Adopt what still runs from before, then keep the pool filled and checked."""
        if self._started:
            return
        existing = await self.backend.list_existing()
        # Final now that the backend is open (Docker: the engine's host name).
        self.host = self.backend.host
        self._started = True
        for handle in existing:
            slot = Slot(
                sandbox_id=handle.sandbox_id,
                state="leased" if handle.session_id else "warm",
                home=handle.home,
                session_id=handle.session_id,
                from_pool=handle.session_id is None,
                handle=handle,
            )
            slot.ready.set_result(handle)
            self._slots[slot.sandbox_id] = slot
            log.info("adopted sandbox %s (%s)", handle.sandbox_id, handle.session_id or "warm")
        self._loops = [
            asyncio.create_task(self._refill_loop(), name="provisioner-refill"),
            asyncio.create_task(self._check_loop(), name="provisioner-check"),
        ]
        self._notify()

    async def wait(self) -> None:
        """Until a background loop fails (raises what ended it) or the pool stops."""
        if not self._loops:
            return
        done, _ = await asyncio.wait(self._loops, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def stop(self, keep_running: bool) -> None:
        """Stop refilling and checking; keep the desktops for the next start, or stop them."""
        self._stopping = True
        self._notify()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # Starts in flight finish (they are recorded, so adoptable) before we decide.
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if keep_running:
            return
        slots = [slot for slot in self._slots.values() if slot.handle is not None]
        results = await asyncio.gather(
            *(
                self._remove(slot, keep_home=slot.session_id is not None, reason="shutdown")
                for slot in slots
            ),
            return_exceptions=True,
        )
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not stop sandbox %s: %s", slot.sandbox_id, result)

    # -- reading -------------------------------------------------------------

    def sandboxes(self) -> list[SandboxInfo]:
        return [
            SandboxInfo(
                sandbox_id=slot.sandbox_id,
                state=slot.state,
                session_id=slot.session_id if slot.state == "leased" else None,
                home=slot.home,
                started_at=slot.handle.started_at if slot.handle else None,
                host=self.host,
            )
            for slot in self._slots.values()
        ]

    def capacity(self, *, instance: str, interval: float, stopping: bool) -> HostCapacity:
        """What this host announces: its room, and which sandboxes and sessions it holds."""
        counts = dict.fromkeys(("starting", "warm", "leased", "stopping"), 0)
        for slot in self._slots.values():
            counts[slot.state] += 1
        return HostCapacity(
            host=self.host,
            instance=instance,
            free=max(0, self.max_per_host - len(self._slots)),
            warm=counts["warm"],
            starting=counts["starting"],
            leased=counts["leased"],
            max=self.max_per_host,
            waiting=len(self._queue),
            stopping=stopping or self._stopping,
            interval=interval,
            sandboxes=[
                # A session's place counts from the moment it is promised,
                # so its next request finds this host even while it starts.
                HostSandbox(sandbox_id=slot.sandbox_id, session_id=slot.session_id)
                for slot in self._slots.values()
                if slot.state != "stopping"
            ],
        )

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def endpoint(self, sandbox_id: str) -> SandboxHandle:
        """A leased desktop's endpoint and secrets.

        Only leased ones: whoever learnt a warm desktop's secrets could
        otherwise watch the session that later leases it.
        """
        slot = self._slots.get(sandbox_id)
        if slot is None or slot.handle is None or slot.state != "leased":
            raise UnknownSandbox(f"no leased sandbox {sandbox_id} on {self.host}")
        slot.last_active = time.monotonic()
        return slot.handle

    def endpoint_of_session(self, session_id: str) -> SandboxHandle:
        """The endpoint of the desktop the session holds; never leases one."""
        slot = self._leased_by(session_id)
        if slot is None or slot.handle is None:
            raise UnknownSandbox(f"session {session_id} holds no desktop on {self.host}")
        slot.last_active = time.monotonic()
        return slot.handle

    def touch(self, session_id: str) -> None:
        """The session did something: its desktop is not idle."""
        for slot in self._slots.values():
            if slot.session_id == session_id and slot.state == "leased":
                slot.last_active = time.monotonic()

    def holds(self, session_id: str) -> bool:
        """Whether the session has (or is being given) a desktop here."""
        if session_id in self._pending:
            return True
        return any(
            slot.session_id == session_id and slot.state != "stopping"
            for slot in self._slots.values()
        )

    def _leased_by(self, session_id: str) -> Slot | None:
        for slot in self._slots.values():
            if slot.session_id == session_id and slot.state == "leased":
                return slot
        return None

    # -- leasing -------------------------------------------------------------

    async def lease(self, session_id: str) -> LeaseOutcome:
        """A ready desktop for the session: the one it holds, a warm one, or a new one."""
        started = time.monotonic()
        pending = self._pending.get(session_id)
        if pending is not None:
            # The same session asked twice at once: one desktop, two answers.
            return await asyncio.shield(pending)
        held = self._leased_by(session_id)
        if held is not None and held.handle is not None:
            held.last_active = time.monotonic()
            return LeaseOutcome(held.handle, held.from_pool, time.monotonic() - started)
        future: asyncio.Future[LeaseOutcome] = asyncio.get_running_loop().create_future()
        self._pending[session_id] = future
        try:
            outcome = await self._lease_new(session_id, started)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting on it; that is fine.
            future.exception()
            raise
        else:
            future.set_result(outcome)
            return outcome
        finally:
            del self._pending[session_id]

    async def _lease_new(self, session_id: str, started: float) -> LeaseOutcome:
        home = self.state.home_of(session_id)
        choice = await self._wait_for_room(session_id, home, started + self.lease_wait)
        kind, slot, victim = choice
        try:
            if kind == "warm":
                handle = slot.ready.result()
            else:
                if victim is not None:
                    # Its place goes to this session; its home was nobody's.
                    await self._remove(victim, keep_home=False, reason="evicted")
                if kind in ("cold", "replace"):
                    self._spawn_start(slot)
                handle = await asyncio.shield(slot.ready)
            if handle.session_id != session_id:
                handle = await self.backend.bind(handle, session_id)
                slot.handle = handle
        except BaseException:
            if slot.state == "starting" and kind == "claimed" and not slot.ready.done():
                # Give the claimed warm desktop back to the pool.
                slot.session_id = None
            elif slot.sandbox_id in self._slots and slot.ready.done() and slot.handle is not None:
                await self._remove(slot, keep_home=True, reason="released")
            self._notify()
            raise
        slot.state = "leased"
        slot.session_id = session_id
        slot.last_active = time.monotonic()
        if self.state.home_of(session_id) != slot.home:
            self.state.bind_home(session_id, slot.home)
        # A claimed pool desktop was still starting: not ready-made, so not warm.
        warm = kind == "warm" or (kind == "own" and slot.from_pool)
        await self._emit(
            SandboxLeased(
                sandbox_id=slot.sandbox_id, host=self.host, session_id=session_id, warm=warm
            )
        )
        self._notify()
        return LeaseOutcome(handle, warm, time.monotonic() - started)

    async def _wait_for_room(self, session_id: str, home: str | None, deadline: float) -> Choice:
        ticket = object()
        self._queue.append(ticket)
        try:
            while True:
                if self._stopping:
                    raise ProvisionerError(f"the provisioner on {self.host} is shutting down")
                # Strictly in arrival order: only the oldest request may take a place.
                if self._queue[0] is ticket:
                    choice = self._choose(session_id, home)
                    if choice is not None:
                        return choice
                changed = self._changed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CapacityExhausted(self._full_reason())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._queue.remove(ticket)
            self._notify()

    def _full_reason(self) -> str:
        counts = {state: 0 for state in ("starting", "warm", "leased", "stopping")}
        for slot in self._slots.values():
            counts[slot.state] += 1
        return (
            f"no desktop free on {self.host}: {len(self._slots)} of {self.max_per_host} in use "
            f"({counts['leased']} leased, {counts['starting']} starting, "
            f"{counts['stopping']} stopping) for the whole {self.lease_wait:.0f} s wait; "
            "release a session or raise PROVISIONER_MAX_PER_HOST"
        )

    def _choose(self, session_id: str, home: str | None) -> Choice | None:
        """Take a place for the session if there is one. No awaits: decided atomically."""
        for slot in self._slots.values():
            if slot.session_id == session_id:
                if slot.state == "stopping":
                    # Its previous desktop is still stopping: two desktops on
                    # one home would fight over it. The removal wakes us.
                    return None
                # Started for it by a lease that gave up waiting: take that.
                return ("own", slot, None)
        pool_slots = [s for s in self._slots.values() if s.from_pool and s.session_id is None]
        if home is None:
            for slot in pool_slots:
                if slot.state == "warm":
                    slot.state = "leased"
                    slot.session_id = session_id
                    return ("warm", slot, None)
            for slot in pool_slots:
                if slot.state == "starting":
                    # Started before this request: sooner ready than a new one.
                    slot.session_id = session_id
                    return ("claimed", slot, None)
        if len(self._slots) < self.max_per_host:
            slot = self._new_slot(session_id, home or home_name(session_id))
            return ("cold", slot, None)
        if home is not None:
            for victim in pool_slots:
                if victim.state == "warm":
                    victim.state = "stopping"
                    slot = self._new_slot(session_id, home)
                    return ("replace", slot, victim)
        return None

    def _new_slot(self, session_id: str | None, home: str | None) -> Slot:
        sandbox_id = new_sandbox_id()
        slot = Slot(
            sandbox_id=sandbox_id,
            state="starting",
            home=home or home_name(sandbox_id),
            session_id=session_id,
            from_pool=session_id is None,
        )
        self._slots[sandbox_id] = slot
        return slot

    # -- starting ------------------------------------------------------------

    def _spawn_start(self, slot: Slot) -> None:
        task = asyncio.create_task(self._start(slot), name=f"start-{slot.sandbox_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, slot: Slot) -> None:
        # The session a cold start is for; a pool start is for nobody yet,
        # even if a lease claims it while it starts.
        owner = None if slot.from_pool else slot.session_id
        began = time.monotonic()
        try:
            async with self._starting:
                handle = await self.backend.create(slot.sandbox_id, owner, slot.home)
        except Exception as exc:
            self._slots.pop(slot.sandbox_id, None)
            error = exc if isinstance(exc, ProvisionerError) else SandboxStartFailed(str(exc))
            slot.ready.set_exception(error)
            slot.ready.exception()
            log.error("sandbox %s did not start: %s", slot.sandbox_id, exc)
            if slot.from_pool:
                self._refill_after = time.monotonic() + self._refill_backoff
                self._refill_backoff = min(self._refill_backoff * 2, REFILL_BACKOFF_MAX)
            await self._emit(
                SandboxLost(
                    sandbox_id=slot.sandbox_id,
                    host=self.host,
                    session_id=owner,
                    reason=f"did not start: {exc}",
                )
            )
            self._notify()
            return
        if slot.from_pool:
            self._refill_backoff = 1.0
        slot.handle = handle
        if slot.session_id is None:
            slot.state = "warm"
        elif not slot.from_pool:
            # A cold start belongs to its session even if the lease that asked
            # has gone (the next lease finds it; idle release reclaims it).
            slot.state = "leased"
        slot.ready.set_result(handle)
        log.info(
            "sandbox %s ready in %.1f s (%s)",
            slot.sandbox_id,
            time.monotonic() - began,
            "warm pool" if slot.from_pool else f"session {owner}",
        )
        await self._emit(
            SandboxReady(
                sandbox_id=slot.sandbox_id,
                host=self.host,
                session_id=owner,
                start_ms=(time.monotonic() - began) * 1000,
            )
        )
        self._notify()

    async def _refill_loop(self) -> None:
        while not self._stopping:
            changed = self._changed
            self._refill()
            delay = max(0.0, self._refill_after - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), delay or None)

    def _refill(self) -> None:
        # Waiting leases come first: a warm start now would take their place.
        if self._queue or time.monotonic() < self._refill_after:
            return
        ready_or_starting = sum(
            1
            for s in self._slots.values()
            if s.from_pool and s.session_id is None and s.state in ("starting", "warm")
        )
        missing = self.warm_target - ready_or_starting
        room = self.max_per_host - len(self._slots)
        for _ in range(max(0, min(missing, room))):
            self._spawn_start(self._new_slot(None, None))

    # -- releasing -----------------------------------------------------------

    async def release(
        self, session_id: str, keep_home: bool = True, reason: ReleaseReason = "released"
    ) -> tuple[str | None, bool]:
        """Stop the session's desktop. Returns (its sandbox id or None, whether the home went)."""
        pending = self._pending.get(session_id)
        if pending is not None:
            # A release that overtakes its own lease applies once the lease lands.
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        slot = self._leased_by(session_id)
        sandbox_id = None
        if slot is not None:
            sandbox_id = slot.sandbox_id
            await self._remove(slot, keep_home=True, reason=reason, home_deleted=not keep_home)
        deleted = False
        if not keep_home:
            deleted = await self.backend.delete_home(session_id)
        return sandbox_id, deleted

    async def _remove(
        self,
        slot: Slot,
        *,
        keep_home: bool,
        reason: ReleaseReason,
        home_deleted: bool | None = None,
    ) -> None:
        slot.state = "stopping"
        try:
            if slot.handle is not None:
                await self.backend.destroy(slot.handle, keep_home=keep_home)
        finally:
            self._slots.pop(slot.sandbox_id, None)
            self._notify()
        kept = keep_home if home_deleted is None else not home_deleted
        await self._emit(
            SandboxReleased(
                sandbox_id=slot.sandbox_id,
                host=self.host,
                session_id=slot.session_id,
                reason=reason,
                home_kept=kept,
                detail=f"the provisioner of host {self.host} stopped"
                if reason == "shutdown"
                else "",
            )
        )

    # -- checking ------------------------------------------------------------

    async def _check_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check()
            except Exception:
                log.exception("checking sandboxes failed")

    async def check(self) -> None:
        """Release idle desktops and drop dead ones."""
        now = time.monotonic()
        if self.idle_release > 0:
            for slot in list(self._slots.values()):
                if (
                    slot.state == "leased"
                    and slot.session_id is not None
                    and now - slot.last_active > self.idle_release
                ):
                    log.info("releasing idle sandbox %s of %s", slot.sandbox_id, slot.session_id)
                    await self.release(slot.session_id, keep_home=True, reason="idle")
        running = [s for s in self._slots.values() if s.state in ("warm", "leased") and s.handle]
        verdicts = await asyncio.gather(
            *(self.backend.alive(s.handle) for s in running if s.handle is not None)
        )
        for slot, alive in zip(running, verdicts, strict=True):
            if alive or slot.state not in ("warm", "leased") or slot.handle is None:
                continue
            reason = await self.backend.why_dead(slot.handle)
            log.warning("sandbox %s lost: %s", slot.sandbox_id, reason)
            with contextlib.suppress(Exception):
                # Its record and remains go; a session's home stays for its next desktop.
                await self.backend.destroy(slot.handle, keep_home=slot.session_id is not None)
            self._slots.pop(slot.sandbox_id, None)
            await self._emit(
                SandboxLost(
                    sandbox_id=slot.sandbox_id,
                    host=self.host,
                    session_id=slot.session_id,
                    reason=reason,
                )
            )
            self._notify()

    # -- plumbing ------------------------------------------------------------

    def _notify(self) -> None:
        """Wake everything waiting for a change (waiting leases, the refill loop)."""
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change()

    async def _emit(self, event: SandboxEvent) -> None:
        if self._publish is None:
            return
        try:
            await self._publish(event)
        except Exception as exc:
            # Events inform; a bus hiccup must not undo a lease or a release.
            log.warning("could not publish %s: %s", event.kind, exc)
