"""Running the suite against a stack: each task on its own session's desktop, several at once.

For one run of a task: a new session (``POST /api/sessions``, which leases
its desktop), the desktop's exec endpoint from the provisioner
(``agent.provisioner.connect``, admin identity: that reply carries secrets),
the task's setup, the instruction (``POST /api/tasks`` with the task's step
budget), the session's events until ``task.finished`` or the task's time
budget (then a ``stop``), the checker, the session's step and token counts,
and the session closed with its home deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import nats
from nats.aio.client import Client

from selfagent.actuator.sandbox_exec import SandboxExec
from selfagent.bus.auth import ClientCredentials
from selfagent.errors import SelfagentError
from selfagent.schemas import ConnectRequest, SandboxEndpoint, subjects

from .desktop import Desktop
from .suite import EvalTask

log = logging.getLogger("selfagent.eval")

POLL = 0.5
# After a stop, how long the planner gets to report the end.
STOP_GRACE = 20.0


@dataclass
class RunResult:
    task: str
    category: str
    attempt: int
    passed: bool
    # Why it failed, one short phrase first ("checker: ...", "timeout", ...); empty on a pass.
    reason: str = ""
    agent_status: str = ""
    agent_reply: str = ""
    steps: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    session_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    """The stack to drive: its gateway, and NATS as an identity that may ask for desktops."""

    gateway_url: str
    token: str
    nats: ClientCredentials


# Makes the prompt for a task's attempt (tests put a routing tag in front).
PromptOf = Callable[[EvalTask, int], str]


def plain_prompt(task: EvalTask, attempt: int) -> str:
    return task.instruction


@dataclass
class Runner:
    target: Target
    parallel: int = 4
    prompt_of: PromptOf = plain_prompt
    on_result: Callable[[RunResult], None] | None = None
    _http: httpx.AsyncClient | None = field(default=None, repr=False)
    _nc: Client | None = field(default=None, repr=False)

    async def run(self, tasks: list[EvalTask], repeat: int = 1) -> list[RunResult]:
        gate = asyncio.Semaphore(max(1, self.parallel))
        self._http = httpx.AsyncClient(
            base_url=self.target.gateway_url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.target.token}"},
            timeout=httpx.Timeout(60.0, connect=5.0),
        )
        creds = self.target.nats
        options: dict[str, Any] = {"inbox_prefix": creds.inbox_prefix} if creds.user else {}
        if creds.password:
            options.update(user=creds.user, password=creds.password)
        self._nc = await nats.connect(
            creds.url, connect_timeout=5, max_reconnect_attempts=3, **options
        )

        async def one(task: EvalTask, attempt: int) -> RunResult:
            async with gate:
                result = await self.run_one(task, attempt)
            if self.on_result is not None:
                self.on_result(result)
            return result

        try:
            return list(
                await asyncio.gather(
                    *(one(task, attempt) for attempt in range(repeat) for task in tasks)
                )
            )
        finally:
            await self._http.aclose()
            await self._nc.drain()

    async def _endpoint(self, session_id: str) -> SandboxEndpoint:
        assert self._nc is not None
        reply = await self._nc.request(
            subjects.PROVISIONER_CONNECT,
            ConnectRequest(session_id=session_id).model_dump_json().encode(),
            timeout=15,
        )
        endpoint = SandboxEndpoint.model_validate_json(reply.data)
        if not endpoint.ok or not endpoint.exec_url:
            why = endpoint.error.message if endpoint.error else "no exec endpoint"
            raise _Infra(f"no desktop endpoint for the session: {why}")
        return endpoint

    async def _events(self, session_id: str) -> list[dict[str, Any]]:
        assert self._http is not None
        reply = await self._http.get(f"/api/sessions/{session_id}/events")
        reply.raise_for_status()
        events: list[dict[str, Any]] = reply.json()["events"]
        return events

    async def _finished(self, session_id: str, deadline: float) -> dict[str, Any] | None:
        while True:
            for event in await self._events(session_id):
                if event["kind"] == "task.finished":
                    return event
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(POLL)

    async def run_one(self, task: EvalTask, attempt: int) -> RunResult:
        assert self._http is not None
        result = RunResult(task=task.id, category=task.category, attempt=attempt, passed=False)
        started = time.monotonic()
        desk: Desktop | None = None
        try:
            created = await self._http.post("/api/sessions")
            if created.status_code != 201:
                raise _Infra(f"no session: {created.status_code} {created.text[:200]}")
            result.session_id = created.json()["session_id"]
            endpoint = await self._endpoint(result.session_id)
            desk = Desktop(SandboxExec(endpoint.exec_url, endpoint.exec_token))
            await desk.resolve_home()
            for app in task.apps:
                if (await desk.sh(f"command -v {app}")).exit_code != 0:
                    raise _Infra(f"{app} is not installed on the desktop")
            if task.setup:
                try:
                    await desk.ok(task.setup, timeout=120)
                except SelfagentError as exc:
                    raise _Infra(f"setup failed: {exc}") from exc
            submitted = await self._http.post(
                "/api/tasks",
                json={
                    "prompt": self.prompt_of(task, attempt),
                    "session_id": result.session_id,
                    "max_steps": task.max_steps,
                },
            )
            if submitted.status_code != 202:
                raise _Infra(f"task refused: {submitted.status_code} {submitted.text[:200]}")
            finished = await self._finished(result.session_id, time.monotonic() + task.timeout)
            timed_out = finished is None
            if finished is None:
                await self._http.post(
                    f"/api/sessions/{result.session_id}/control", json={"command": "stop"}
                )
                finished = await self._finished(result.session_id, time.monotonic() + STOP_GRACE)
            if finished is not None:
                result.agent_status = str(finished.get("status", ""))
                result.agent_reply = str(finished.get("reply", ""))[:500]
                result.steps = int(finished.get("steps", 0))
            state = await self._http.get(f"/api/sessions/{result.session_id}")
            if state.status_code == 200:
                body = state.json()
                result.tokens = int(body.get("tokens", 0))
                result.steps = max(result.steps, int(body.get("steps", 0)))
            try:
                verdict = await task.check(desk)
            except SelfagentError as exc:
                result.reason = f"checker error: {exc}"
            else:
                result.passed = verdict.ok
                if not verdict.ok:
                    result.reason = _failure(timed_out, result, verdict.reason)
        except _Infra as exc:
            result.reason = f"infrastructure: {exc}"
        except (httpx.HTTPError, nats.errors.Error, SelfagentError) as exc:
            result.reason = f"infrastructure: {type(exc).__name__}: {exc}"
        finally:
            result.wall_s = round(time.monotonic() - started, 2)
            if desk is not None:
                await desk.close()
            if result.session_id:
                try:
                    await self._http.delete(
                        f"/api/sessions/{result.session_id}", params={"keep_home": "false"}
                    )
                except httpx.HTTPError as exc:
                    log.warning("could not close session %s: %s", result.session_id, exc)
        return result


def _failure(timed_out: bool, result: RunResult, check: str) -> str:
    """The first reason a run failed: the budget, the agent's own failure, else the checker."""
    if timed_out:
        return f"timeout: {check}"
    if result.agent_status == "failed":
        return f"agent failed ({result.agent_reply[:120]}): {check}"
    if result.agent_status == "stopped":
        return f"stopped: {check}"
    return f"checker: {check}"


class _Infra(Exception):
    """The run could not happen as meant (no desktop, setup failed): not the agent's fault."""
