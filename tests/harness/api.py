"""Talking to a running stack's gateway the way a program would."""

from __future__ import annotations

import time
from typing import Any

import httpx

from selfagent.local import LocalStack
from tests.harness.fakellm import tool_call


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
