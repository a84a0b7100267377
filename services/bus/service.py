"""The one shape of every service: ``build(settings)``, then ``start()``, then ``stop()``.

Each service's ``service.py`` has ``build(settings) -> <Name>Service``: it
constructs the parts and wires the subscribers without any I/O. ``start()``
connects and starts what the service runs; ``stop()`` releases all of it.
``selfagent.bus.runtime.run_service`` drives that sequence for every
``python -m selfagent.<service>``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

log = logging.getLogger(__name__)


class Service(abc.ABC):
    """Base of every service (and of the gateway's bus side).

    Whatever a service acquires (a broker, a VNC link, an HTTP client, a
    background task) is registered on ``self.resources`` as it is created,
    in build or in start, so that ``stop()`` releases exactly that, newest
    first, also after a start that failed or was cancelled half-way.
    ``stop()`` can be called any number of times.
    """

    def __init__(self) -> None:
        self.resources = AsyncExitStack()
        self._stop_lock = asyncio.Lock()
        self._stopping = False
        self._failure: asyncio.Future[None] | None = None

    @abc.abstractmethod
    async def _start(self) -> None:
        """Connect and start; register each release on ``self.resources``."""

    async def start(self) -> None:
        self._stopping = False
        if self._failure is not None and self._failure.done():
            # A failure from an earlier run; one still pending may already
            # have a waiter (wait() can begin before start(), as the gateway
            # does), so it is kept.
            self._failure = None
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._stopping = True
        async with self._stop_lock:
            await self.resources.aclose()
        if self._failure is not None and self._failure.done() and not self._failure.cancelled():
            # Whoever waited has seen it; nobody else will.
            self._failure.exception()

    async def wait(self) -> None:
        """Until the service can no longer run by itself; raises what ended it.

        A service normally runs until it is stopped; this raises when a
        background task whose errors are fatal (see :meth:`spawn`) failed.
        """
        await self._failed()

    def spawn(
        self, coro: Coroutine[Any, Any, object], *, name: str, errors_are_fatal: bool = False
    ) -> asyncio.Task[object]:
        """Run ``coro`` in the background until it ends or ``stop()`` cancels it.

        If it raises, the error is logged; with ``errors_are_fatal`` the
        service has failed instead, and :meth:`wait` raises that error.
        """
        task: asyncio.Task[object] = asyncio.create_task(coro, name=name)
        self.resources.push_async_callback(_cancel_and_wait, task)
        task.add_done_callback(self._fatal_ended if errors_are_fatal else _log_failure)
        return task

    def _failed(self) -> asyncio.Future[None]:
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        return self._failure

    def _fatal_ended(self, task: asyncio.Task[object]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if self._stopping:
            _log_failure(task)
            return
        failure = self._failed()
        if not failure.done():
            failure.set_exception(exc)


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s failed", task.get_name(), exc_info=exc)


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait until it has finished unwinding.

    What the task raised was already reported when it ended (see ``spawn``).
    """
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
