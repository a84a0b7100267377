"""The desktops one actuator serves: opened when leased, closed when released or lost.

With per-session desktops one actuator serves every leased sandbox (see
docs/architecture.md, "One actuator for every desktop"). A desktop is opened
on its ``sandbox.leased`` event, or on the first request for it when that
event was missed; its endpoint and secrets come from the provisioner
(``agent.provisioner.connect``), never from an event. It is closed on
``sandbox.released`` or ``sandbox.lost``, and by a periodic check against
the provisioner's status for events missed while the actuator was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from selfagent.errors import DesktopUnavailable
from selfagent.schemas import SandboxEndpoint

from .backend import VncDesktop
from .config import Settings
from .executor import Executor
from .sandbox_exec import SandboxExec

log = logging.getLogger(__name__)

Connect = Callable[[str], Awaitable[SandboxEndpoint]]


@dataclass
class Served:
    """One desktop: its VNC link, its exec endpoint and the executor that drives both."""

    sandbox_id: str
    desktop: VncDesktop
    sandbox: SandboxExec
    executor: Executor
    # The session holding it, as the provisioner says (None: a fixed desktop).
    session_id: str | None = None

    @classmethod
    def open(cls, sandbox_id: str, endpoint: SandboxEndpoint, settings: Settings) -> Served:
        desktop = VncDesktop(
            endpoint.vnc_host,
            endpoint.vnc_port,
            endpoint.vnc_password or None,
            connect_timeout=settings.vnc_connect_timeout,
            retry_interval=settings.vnc_retry_interval,
            wait_for_link=settings.vnc_wait_for_link,
        )
        sandbox = SandboxExec(
            endpoint.exec_url or None, endpoint.exec_token or None, settings.exec_timeout_margin
        )
        executor = Executor(desktop, sandbox, settings)
        return cls(sandbox_id, desktop, sandbox, executor, endpoint.session_id)

    async def close(self) -> None:
        await self.desktop.stop()
        await self.sandbox.close()


class Fleet:
    """Sandbox id -> the desktop being served; opening one happens once however many ask."""

    def __init__(self, settings: Settings, connect: Connect) -> None:
        self.settings = settings
        self._connect = connect
        self._served: dict[str, Served] = {}
        self._opening: dict[str, asyncio.Future[Served]] = {}

    @property
    def sandbox_ids(self) -> list[str]:
        return sorted(self._served)

    def served(self, sandbox_id: str) -> Served | None:
        return self._served.get(sandbox_id)

    def add(self, served: Served) -> None:
        """A desktop known from the settings (fixed mode): served until the actuator stops."""
        self._served[served.sandbox_id] = served

    async def get(self, sandbox_id: str) -> Served:
        """The served desktop, opened now if needed.

        Raises:
            DesktopUnavailable: the provisioner knows no such leased desktop,
                or its VNC server did not answer in time.
        """
        served = self._served.get(sandbox_id)
        if served is not None:
            return served
        opening = self._opening.get(sandbox_id)
        if opening is None:
            opening = asyncio.ensure_future(self._open(sandbox_id))
            self._opening[sandbox_id] = opening
            opening.add_done_callback(lambda _: self._opening.pop(sandbox_id, None))
        return await asyncio.shield(opening)

    async def _open(self, sandbox_id: str) -> Served:
        try:
            endpoint = await self._connect(sandbox_id)
        except Exception as exc:
            raise DesktopUnavailable(f"no desktop {sandbox_id} to act on: {exc}") from exc
        served = Served.open(sandbox_id, endpoint, self.settings)
        await served.desktop.start()
        try:
            # The first action should not meet a link still coming up.
            await served.desktop.wait_ready(self.settings.vnc_connect_timeout)
        except TimeoutError:
            log.warning("desktop %s: VNC not up yet; actions will wait for it", sandbox_id)
        self._served[sandbox_id] = served
        log.info("serving desktop %s (VNC %s:%d)", sandbox_id, endpoint.vnc_host, endpoint.vnc_port)
        return served

    async def open_soon(self, sandbox_id: str) -> None:
        """Open a desktop ahead of its first action (on its lease); failures only log."""
        try:
            await self.get(sandbox_id)
        except DesktopUnavailable as exc:
            log.warning("%s", exc)

    async def close(self, sandbox_id: str, why: str) -> None:
        opening = self._opening.get(sandbox_id)
        if opening is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(opening)
        served = self._served.pop(sandbox_id, None)
        if served is not None:
            log.info("no longer serving desktop %s: %s", sandbox_id, why)
            await served.close()

    async def keep_only(self, leased: set[str], fixed: set[str]) -> None:
        """Close every opened desktop the provisioner no longer lends out."""
        for sandbox_id in list(self._served):
            if sandbox_id not in leased and sandbox_id not in fixed:
                await self.close(sandbox_id, "not leased any more")

    async def close_all(self) -> None:
        for sandbox_id in list(self._served):
            await self.close(sandbox_id, "the actuator is stopping")
