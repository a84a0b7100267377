"""Talking to a running stack's gateway the way a program would."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import httpx
from faststream.nats import NatsBroker

from selfagent.bus import request
from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from selfagent.schemas import (
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    StatusRequest,
    subjects,
)
from tests.harness.fakellm import FakeLLM, tool_call


def computer(**arguments: Any) -> dict[str, Any]:
    """A scripted reply: one native tool call to the `computer` tool."""
    return tool_call("computer", arguments)


def chat(stack: LocalStack, prompt: str, timeout: float = 120) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.gateway_url}/api/chat",
        json={"prompt": prompt},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def session_events(stack: LocalStack, session_id: str) -> list[dict[str, Any]]:
    """The session's history from the gateway, once it holds the task's end."""
    deadline = time.monotonic() + 10
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{stack.gateway_url}/api/sessions/{session_id}/events",
            headers={"Authorization": f"Bearer {stack.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        events = response.json()["events"]
        if any(e["kind"] == "task.finished" for e in events):
            break
        time.sleep(0.3)
    return events


def auth_headers(stack: LocalStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}"}


async def submit_task(stack: LocalStack, prompt: str, session_id: str | None = None) -> str:
    """``POST /api/tasks`` (a new session, or ``session_id``'s); the session id."""
    body: dict[str, Any] = {"prompt": prompt}
    if session_id:
        body["session_id"] = session_id
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{stack.gateway_url}/api/tasks", json=body, headers=auth_headers(stack), timeout=10
        )
    assert reply.status_code == 202, reply.text
    session: str = reply.json()["session_id"]
    return session


async def fetch_events(stack: LocalStack, session_id: str) -> list[dict[str, Any]]:
    """The session's history from the gateway, as it is now."""
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            f"{stack.gateway_url}/api/sessions/{session_id}/events",
            headers=auth_headers(stack),
            timeout=10,
        )
    assert reply.status_code == 200, reply.text
    events: list[dict[str, Any]] = reply.json()["events"]
    return events


def scripted_stack(
    llm: FakeLLM, name: str, desktops: Literal["fixed", "per_session"], **env: str
) -> LocalStack:
    """A local stack (not started) whose planner talks to the scripted ``llm``,
    grounding with OCR and no start-up canaries; ``env`` adds or overrides."""
    return LocalStack(
        desktops=desktops,
        gateway_port=free_port(),
        token=f"{name}-" + secrets.token_urlsafe(24),
        extra_env={
            "LLM_API_BASE_URL": llm.base_url,
            "LLM_MODEL": "fake-planner",
            "GROUNDER_FAMILY": "ocr",
            "GROUNDER_CANARY": "false",
            "PLANNER_CANARY": "false",
            **env,
        },
    )


async def provisioner_status(bus: NatsBroker) -> ProvisionerStatus:
    return await request(
        bus, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=5
    )


async def desktop_of(bus: NatsBroker, session_id: str) -> str:
    """The sandbox id of the desktop ``session_id`` holds now."""
    for info in (await provisioner_status(bus)).sandboxes:
        if info.session_id == session_id and info.state == "leased":
            return info.sandbox_id
    raise AssertionError(f"session {session_id} holds no desktop")


async def release_sessions(bus: NatsBroker, *session_ids: str) -> None:
    for session_id in session_ids:
        await request(
            bus,
            subjects.PROVISIONER_RELEASE,
            ReleaseRequest(session_id=session_id),
            Released,
            timeout=30,
        )
