"""The native backend and the pool with real desktops (sandbox/start.sh: Xvnc + Xfce)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfagent.errors import CapacityExhausted, RFBError, SandboxStartFailed, UnknownSandbox
from selfagent.provisioner.native import NativeBackend, marked_processes
from selfagent.provisioner.state import StateStore
from selfagent.schemas import SandboxLeased, SandboxLost, SandboxReady, SandboxReleased

from .helpers import first_frame, running_pool, shell, unique_host, wait_until, warm_count

pytestmark = pytest.mark.desktop

SCREEN = (1024, 640)


@pytest.fixture
def host() -> Iterator[str]:
    """A provisioner name of its own; nothing of it may outlive the test."""
    name = unique_host()
    yield name
    leftovers = marked_processes(name)
    for pids in leftovers.values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"desktop processes leaked: {leftovers}"


def _is_xvnc(pid: int) -> bool:
    return Path(f"/proc/{pid}/comm").read_text().strip() == "Xvnc"


def make_backend(data_dir: Path, host: str) -> tuple[NativeBackend, StateStore]:
    state = StateStore(data_dir)
    return NativeBackend(state, host=host, screen=SCREEN, start_timeout=90), state


async def test_warm_lease_is_ready_at_once_and_two_sessions_get_two_desktops(
    tmp_path: Path, host: str
) -> None:
    backend, state = make_backend(tmp_path, host)
    async with running_pool(backend, state, warm=1, max_per_host=3) as (pool, events):
        await wait_until(lambda: warm_count(pool) == 1, 120, "a warm desktop")

        began = time.monotonic()
        first = await pool.lease("session-a")
        size = await first_frame(
            "127.0.0.1", first.handle.endpoint.vnc_port, first.handle.secrets.vnc_password
        )
        ready_in = time.monotonic() - began
        assert first.warm
        assert size == SCREEN
        # A warm lease is bookkeeping: lease + VNC login + first frame (tens of
        # milliseconds; the bound leaves room for a loaded machine).
        assert ready_in < 0.8, f"warm lease took {ready_in:.3f}s to the first frame"
        assert first.handle.session_id == "session-a"

        # The pool refills; a second session gets the refill, on its own display.
        await wait_until(lambda: warm_count(pool) == 1, 120, "the pool to refill")
        # Nobody gets a warm desktop's secrets before a session leases it.
        warm_id = next(i.sandbox_id for i in pool.sandboxes() if i.state == "warm")
        with pytest.raises(UnknownSandbox):
            pool.endpoint(warm_id)
        assert pool.endpoint(first.handle.sandbox_id) == first.handle
        second = await pool.lease("session-b")
        assert second.warm
        a, b = first.handle, second.handle
        assert a.sandbox_id != b.sandbox_id
        assert a.endpoint.vnc_port != b.endpoint.vnc_port
        assert a.endpoint.exec_url != b.endpoint.exec_url
        assert a.home != b.home
        assert a.secrets.vnc_password != b.secrets.vnc_password
        assert a.secrets.exec_token != b.secrets.exec_token
        # Each desktop takes only its own secrets.
        with pytest.raises(RFBError):
            await first_frame("127.0.0.1", b.endpoint.vnc_port, a.secrets.vnc_password)
        refused = await shell(b, "true", token=a.secrets.exec_token)
        assert refused.status_code == 401
        # Each runs its own X server: a window opened on one is not on the other.
        reply = await shell(a, "echo $DISPLAY; echo $HOME")
        display_a, home_a = reply.json()["stdout"].split()
        reply = await shell(b, "echo $DISPLAY")
        assert reply.json()["stdout"].strip() != display_a
        assert Path(home_a).name == a.home

        # Asking again for a session returns the desktop it holds.
        again = await pool.lease("session-a")
        assert again.handle.sandbox_id == a.sandbox_id
        # Asking twice at once gets one desktop.
        x, y = await asyncio.gather(pool.lease("session-c"), pool.lease("session-c"))
        assert x.handle.sandbox_id == y.handle.sandbox_id
        assert [i.session_id for i in pool.sandboxes()].count("session-c") == 1

        kinds = [event.kind for event in events]
        assert kinds.count("sandbox.ready") >= 2
        assert [e.session_id for e in events if isinstance(e, SandboxLeased)] == [
            "session-a",
            "session-b",
            "session-c",
        ]


async def test_release_stops_every_process_and_the_next_desktop_keeps_the_home(
    tmp_path: Path, host: str
) -> None:
    backend, state = make_backend(tmp_path, host)
    async with running_pool(backend, state, warm=0, max_per_host=2) as (pool, events):
        first = await pool.lease("session-h")
        assert not first.warm
        handle = first.handle
        reply = await shell(handle, "echo kept > ~/note.txt && cat ~/note.txt")
        assert reply.json()["stdout"] == "kept\n"
        assert set(marked_processes(host)) == {handle.sandbox_id}
        record = state.sandbox_dir / f"{handle.sandbox_id}.json"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.sandbox_dir.stat().st_mode) == 0o700

        sandbox_id, deleted = await pool.release("session-h")
        assert (sandbox_id, deleted) == (handle.sandbox_id, False)
        assert marked_processes(host) == {}
        assert not record.exists()
        with pytest.raises(RFBError, match="cannot connect"):
            await first_frame("127.0.0.1", handle.endpoint.vnc_port, handle.secrets.vnc_password)
        released = [e for e in events if isinstance(e, SandboxReleased)]
        assert [(e.sandbox_id, e.home_kept) for e in released] == [(handle.sandbox_id, True)]

        # The session's next task: a new desktop, the same home.
        second = await pool.lease("session-h")
        assert second.handle.sandbox_id != handle.sandbox_id
        assert second.handle.home == handle.home
        reply = await shell(second.handle, "cat ~/note.txt")
        assert reply.json()["stdout"] == "kept\n"

        # Released with its home: the home goes too.
        home_dir = backend.homes_dir / handle.home
        assert home_dir.is_dir()
        assert await pool.release("session-h", keep_home=False) == (
            second.handle.sandbox_id,
            True,
        )
        assert not home_dir.exists()
        assert state.home_of("session-h") is None
        assert marked_processes(host) == {}


async def test_a_full_host_makes_leases_wait_in_order_then_refuses(
    tmp_path: Path, host: str
) -> None:
    backend, state = make_backend(tmp_path, host)
    async with running_pool(backend, state, warm=0, max_per_host=1, lease_wait=6.0) as (
        pool,
        _events,
    ):
        await pool.lease("holder")

        # Nobody releases: the request waits the whole time, then gets the reason.
        began = time.monotonic()
        with pytest.raises(CapacityExhausted) as refused:
            await pool.lease("too-many")
        waited = time.monotonic() - began
        assert 5.9 < waited < 7.5
        assert "1 of 1 in use" in str(refused.value)
        assert "PROVISIONER_MAX_PER_HOST" in str(refused.value)
        assert pool.waiting == 0

        # Two wait; one desktop is released: the earlier request gets the place.
        earlier = asyncio.create_task(pool.lease("earlier"))
        await asyncio.sleep(0.2)
        later = asyncio.create_task(pool.lease("later"))
        await wait_until(lambda: pool.waiting == 2, 5, "two waiting leases")
        await pool.release("holder")
        got = await earlier
        assert got.handle.session_id == "earlier"
        with pytest.raises(CapacityExhausted):
            await later
        assert {info.session_id for info in pool.sandboxes()} == {"earlier"}


async def test_idle_desktops_are_released_and_dead_ones_reported(tmp_path: Path, host: str) -> None:
    backend, state = make_backend(tmp_path, host)
    async with running_pool(
        backend, state, warm=0, max_per_host=2, idle_release=2.0, check_interval=0.3
    ) as (pool, events):
        idle = await pool.lease("idle")
        busy = await pool.lease("busy")
        # Activity keeps a desktop: touch "busy" while "idle" ages.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            pool.touch("busy")
            await asyncio.sleep(0.2)
        released = [e for e in events if isinstance(e, SandboxReleased)]
        assert [(e.sandbox_id, e.reason, e.home_kept) for e in released] == [
            (idle.handle.sandbox_id, "idle", True)
        ]
        assert set(marked_processes(host)) == {busy.handle.sandbox_id}

        # The X server of the busy desktop dies: the check reports it lost.
        xvnc = [pid for pid in marked_processes(host)[busy.handle.sandbox_id] if _is_xvnc(pid)]
        assert xvnc
        os.kill(xvnc[0], signal.SIGKILL)
        await wait_until(
            lambda: any(isinstance(e, SandboxLost) for e in events), 10, "sandbox.lost"
        )
        lost = next(e for e in events if isinstance(e, SandboxLost))
        assert lost.sandbox_id == busy.handle.sandbox_id
        assert lost.session_id == "busy"
        assert str(busy.handle.endpoint.vnc_port) in lost.reason
        assert pool.sandboxes() == []
        await wait_until(lambda: marked_processes(host) == {}, 15, "the lost desktop's remains")
        # Its home is still the session's for the next desktop.
        assert state.home_of("busy") == busy.handle.home


async def test_a_new_provisioner_adopts_its_desktops_and_stops_orphans(
    tmp_path: Path, host: str
) -> None:
    backend, state = make_backend(tmp_path, host)
    async with running_pool(backend, state, warm=1, max_per_host=3, keep_running=True) as (
        pool,
        _events,
    ):
        leased = await pool.lease("kept-session")
        await wait_until(lambda: warm_count(pool) == 1, 120, "a warm desktop")
    # An orphan: a desktop of this host whose record (and so secrets) is lost.
    orphan = await backend.create("sb-orphan", None, "selfagent-home-sb-orphan")
    state.drop_sandbox(orphan.sandbox_id)
    assert len(marked_processes(host)) == 3

    again, state2 = make_backend(tmp_path, host)
    async with running_pool(again, state2, warm=1, max_per_host=3) as (pool2, events2):
        infos = {info.sandbox_id: info for info in pool2.sandboxes()}
        assert leased.handle.sandbox_id in infos
        assert infos[leased.handle.sandbox_id].state == "leased"
        assert [info.state for info in infos.values()].count("warm") == 1
        assert orphan.sandbox_id not in infos
        await wait_until(
            lambda: orphan.sandbox_id not in marked_processes(host), 15, "the orphan to stop"
        )
        # The adopted desktop still takes the secrets it was started with.
        same = await pool2.lease("kept-session")
        assert same.handle.sandbox_id == leased.handle.sandbox_id
        assert (
            await first_frame(
                "127.0.0.1", same.handle.endpoint.vnc_port, same.handle.secrets.vnc_password
            )
            == SCREEN
        )
        assert not [e for e in events2 if isinstance(e, SandboxReady)]
    # This one was told to stop its desktops.
    assert marked_processes(host) == {}


async def test_a_desktop_that_does_not_come_up_leaves_nothing(tmp_path: Path, host: str) -> None:
    state = StateStore(tmp_path)
    # Far too short for Xvnc and Xfce: every attempt gives up half-way.
    backend = NativeBackend(state, host=host, screen=SCREEN, start_timeout=0.3)
    async with running_pool(backend, state, warm=0, max_per_host=2) as (pool, events):
        with pytest.raises(SandboxStartFailed, match="did not start"):
            await pool.lease("unlucky")
        lost = [e for e in events if isinstance(e, SandboxLost)]
        assert len(lost) == 1 and lost[0].session_id == "unlucky"
        assert "did not start" in lost[0].reason
        assert pool.sandboxes() == []
        assert marked_processes(host) == {}
        assert list(state.sandbox_dir.iterdir()) == []
        assert state.home_of("unlucky") is None
        assert list(backend.homes_dir.iterdir()) == []
        # A warm start that fails takes its fresh home with it.
        with pytest.raises(SandboxStartFailed):
            await backend.create("sb-failing", None, "selfagent-home-sb-failing")
        assert not (backend.homes_dir / "selfagent-home-sb-failing").exists()
        assert marked_processes(host) == {}
