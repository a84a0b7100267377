"""Automating selfagent from Python over NATS, with the automation account.

    async with await AutomationClient.connect() as client:   # NATS_* from the environment
        task = await client.submit("open a terminal and run uname -a")
        async for event in client.follow(task):
            print(event.kind)
        # or: finished = await client.wait(task)

It uses only what any NATS client in any language can use (see
docs/automation.md): the documented subjects, the JSON Schemas of
``schemas/json`` and the events stream. It needs nothing but nats-py and the
message models (the package's core dependencies).

Connection settings, each from the argument or else the environment:
``NATS_URL``, ``NATS_USER``, ``NATS_PASSWORD``, ``NATS_TLS_CA`` (the CA that
signed the server's certificate, for TLS), or ``credentials_file`` (the env
file that ``selfagent up`` writes, ``<run dir>/credentials/automation.env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from pydantic import BaseModel, TypeAdapter, ValidationError

from selfagent.bus.auth import AUTOMATION, ClientCredentials, inbox_prefix
from selfagent.bus.broker import display_url, is_refusal, tls_context
from selfagent.errors import BusAuthError, BusUnavailable, RequestTimeout
from selfagent.schemas import ControlCommand, SessionEvent, TaskFinished, TaskSubmitted, subjects
from selfagent.schemas.messages import ControlVerb

log = logging.getLogger(__name__)

T = TypeVar("T")
EVENT: TypeAdapter[SessionEvent] = TypeAdapter(SessionEvent)
DEFAULT_URL = "nats://127.0.0.1:4222"
_DENIED = "permissions violation for publish to "
REFUSAL_GRACE = 0.1


class AutomationClient:
    """One NATS connection as the automation account (or any identity with its rights)."""

    def __init__(self, connection: Client, address: str, timeout: float) -> None:
        self.connection = connection
        self.address = address
        self.timeout = timeout
        self._denied: dict[str, set[asyncio.Future[str]]] = {}

    # --- connecting ---------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        ca_file: str | None = None,
        credentials_file: str | Path | None = None,
        timeout: float = 10.0,
    ) -> AutomationClient:
        """Connect; refused credentials raise :class:`BusAuthError` at once."""
        saved = (
            ClientCredentials.read(Path(credentials_file))
            if credentials_file
            else ClientCredentials(
                url=os.environ.get("NATS_URL", ""),
                user=os.environ.get("NATS_USER", ""),
                password=os.environ.get("NATS_PASSWORD", ""),
                ca_file=os.environ.get("NATS_TLS_CA", ""),
            )
        )
        url = url or saved.url or DEFAULT_URL
        user = user if user is not None else (saved.user or AUTOMATION)
        password = password if password is not None else saved.password
        ca_file = ca_file if ca_file is not None else saved.ca_file
        denied: dict[str, set[asyncio.Future[str]]] = {}

        async def on_error(err: Exception) -> None:
            reason = str(err).removeprefix("nats: ").strip("'").lower()
            if reason.startswith(_DENIED):
                subject = reason.removeprefix(_DENIED).strip('"')
                for waiter in denied.get(subject, ()):
                    if not waiter.done():
                        waiter.set_result(reason)
            if isinstance(err, nats.errors.AuthorizationError) or "authorization" in reason:
                # Raising ends nats-py's connect attempts: a refusal does not heal.
                raise err
            log.warning("NATS at %s: %s", display_url(url), reason)

        options: dict[str, Any] = {"user": user, "password": password} if password else {}
        if ca_file:
            options["tls"] = tls_context(ca_file)
        try:
            connection = await nats.connect(
                url,
                name="selfagent-automation",
                inbox_prefix=inbox_prefix(user),
                error_cb=on_error,
                connect_timeout=max(1, round(timeout)),
                max_reconnect_attempts=-1,
                **options,
            )
        except Exception as exc:
            if is_refusal(exc):
                raise BusAuthError(
                    f"NATS at {display_url(url)} refused user {user!r} ({exc}); check "
                    "NATS_USER and NATS_PASSWORD (the automation credentials)"
                ) from exc
            raise BusUnavailable(f"cannot reach NATS at {display_url(url)}: {exc}") from exc
        client = cls(connection, display_url(url), timeout)
        client._denied = denied
        return client

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.drain()
        await self.connection.close()

    async def __aenter__(self) -> AutomationClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- publishing ---------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        session_id: str | None = None,
        max_steps: int | None = None,
        sandbox_id: str | None = None,
    ) -> TaskSubmitted:
        """Queue a task (a new session unless ``session_id`` names one); returns it once stored."""
        fields: dict[str, Any] = {"prompt": prompt, "max_steps": max_steps}
        if session_id:
            fields["session_id"] = session_id
        if sandbox_id:
            fields["sandbox_id"] = sandbox_id
        task = TaskSubmitted(**fields)
        js = self.connection.jetstream(timeout=self.timeout)
        # Into the tasks stream: the ack means it is stored and a planner will take it.
        await self._checked(
            subjects.TASK_SUBMIT,
            js.publish(
                subjects.TASK_SUBMIT,
                task.model_dump_json().encode(),
                stream=subjects.TASKS_STREAM,
            ),
        )
        return task

    async def control(self, session_id: str, command: ControlVerb, text: str | None = None) -> None:
        """pause, resume, stop, takeover, release, or answer (with ``text``)."""
        message = ControlCommand(session_id=session_id, command=command, text=text)
        await self.publish(subjects.session_control(session_id), message)

    async def stop(self, session_id: str) -> None:
        await self.control(session_id, "stop")

    async def publish(self, subject: str, message: BaseModel) -> None:
        """Publish; raises :class:`BusAuthError` if the server refuses the subject to us."""

        async def send() -> None:
            await self.connection.publish(subject, message.model_dump_json().encode())
            # The server answers a PING after the PUB: a refusal has arrived by then.
            await self.connection.flush(max(1, round(self.timeout)))

        await self._checked(subject, send())

    async def _checked(self, subject: str, operation: Awaitable[T]) -> T:
        key = subject.lower()
        refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._denied.setdefault(key, set()).add(refused)
        work = asyncio.ensure_future(operation)
        try:
            either: set[asyncio.Future[Any]] = {work, refused}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not refused.done():
                # The refusal comes before the flush's PONG on the wire, but its
                # callback can be scheduled behind the flush's wake-up (seen once
                # on a loaded machine): give it a moment before calling it sent.
                await asyncio.wait({refused}, timeout=REFUSAL_GRACE)
            if refused.done():
                raise BusAuthError(
                    f"NATS at {self.address} does not allow this user to publish to "
                    f"{subject} ({refused.result()}); nothing was sent"
                )
            try:
                return work.result()
            except (TimeoutError, nats.errors.TimeoutError) as exc:
                raise RequestTimeout(subject, self.timeout) from exc
        finally:
            waiters = self._denied.get(key, set())
            waiters.discard(refused)
            if not waiters:
                self._denied.pop(key, None)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work

    # --- following ----------------------------------------------------------

    async def events(
        self, session_id: str, *, from_start: bool = True
    ) -> AsyncGenerator[SessionEvent, None]:
        """The session's events in order, from its first (or from now on), without end.

        An ordered consumer on the events stream: it replays what is stored,
        then goes on live, and recreates itself after a gap, so no event is
        missed or repeated.
        """
        js = self.connection.jetstream(timeout=self.timeout)
        subscription = await js.subscribe(
            subjects.session_events(session_id),
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        )
        try:
            async for msg in subscription.messages:
                try:
                    yield EVENT.validate_json(msg.data)
                except ValidationError as exc:
                    log.warning("skipping an unreadable event on %s: %s", msg.subject, exc)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def follow(self, task: TaskSubmitted) -> AsyncGenerator[SessionEvent, None]:
        """This task's events, from its first to its ``task.finished``."""
        # Closed here, not whenever the garbage collector gets to it: that
        # ends the consumer on the server now.
        async with contextlib.aclosing(self.events(task.session_id)) as events:
            async for event in events:
                if event.task_id != task.task_id:
                    continue
                yield event
                if isinstance(event, TaskFinished):
                    return

    async def wait(self, task: TaskSubmitted, timeout: float | None = None) -> TaskFinished:
        """How the task ended (``status``: succeeded, failed or stopped)."""

        async def finished() -> TaskFinished:
            async with contextlib.aclosing(self.follow(task)) as events:
                async for event in events:
                    if isinstance(event, TaskFinished):
                        return event
            raise BusUnavailable("the events ended before the task did")

        return await asyncio.wait_for(finished(), timeout)
