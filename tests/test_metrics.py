"""Every service's Prometheus figures move when a task runs through the real stack.

Local mode with per-session desktops (provisioner, actuator, grounder,
planner, gateway as processes; one native desktop) and the scripted model.
One task: a click on a target the grounder cannot find (so the grounder and
the grounding phase work), a key press (the actuator and its settle), done.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from selfagent.local import LocalStack
from tests.harness.api import chat, computer, scripted_stack
from tests.harness.fakellm import FakeLLM

pytestmark = pytest.mark.desktop

Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]
SERVICES = ("provisioner", "actuator", "grounder", "planner", "gateway")


@pytest.fixture(scope="module")
def metrics_stack(fake_llm: FakeLLM) -> Iterator[LocalStack]:
    local = scripted_stack(
        fake_llm,
        "metrics",
        "per_session",
        PROVISIONER_HOST_NAME=f"metrics-{secrets.token_hex(4)}",
        # One desktop in all: warm first, then the session's.
        PROVISIONER_WARM="1",
        PROVISIONER_MAX_PER_HOST="1",
    )
    local.start()
    yield local
    local.stop(remove=True)


def scrape(url: str, token: str | None = None) -> Figures:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = httpx.get(url, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def fig(figures: Figures, name: str, **labels: str) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def scrape_all(stack: LocalStack) -> dict[str, Figures]:
    return {name: scrape(stack.metrics_url(name)) for name in SERVICES}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def sandboxes(stack: LocalStack, state: str) -> float:
    figures = scrape(stack.metrics_url("provisioner"))
    return fig(figures, "selfagent_provisioner_sandboxes", state=state)


def test_figures_move_when_a_task_runs(metrics_stack: LocalStack, llm: FakeLLM) -> None:
    stack = metrics_stack
    assert set(stack.metrics_ports) == set(SERVICES)
    for name in SERVICES:
        wait_for(f"{name} serves metrics", functools.partial(answers, stack.metrics_url(name)))
    wait_for("a warm desktop", lambda: sandboxes(stack, "warm") == 1, timeout=40)
    before = scrape_all(stack)
    assert fig(before["provisioner"], "selfagent_provisioner_sandboxes", state="leased") == 0
    # Each service lists its own figures only.
    assert not [n for n, _ in before["actuator"] if n.startswith("selfagent_planner_")]
    assert fig(before["grounder"], "selfagent_grounder_concurrency") >= 1

    # The gateway's own /metrics: refused without the token, served with it.
    gateway_metrics = f"{stack.gateway_url}/metrics"
    refused = httpx.get(gateway_metrics, timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "selfagent_" not in refused.text
    wrong = httpx.get(gateway_metrics, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert wrong.status_code == 401
    gateway_before = scrape(gateway_metrics, stack.token)
    assert ("selfagent_gateway_events_relayed_total", frozenset()) in gateway_before
    assert not [n for n, _ in gateway_before if n.startswith("selfagent_planner_")]

    llm.push(
        computer(action="click", target="a button that is nowhere on this screen"),
        computer(action="key", keys="Escape"),
        computer(action="done", message="Pressed Escape."),
    )

    async def run_watched() -> tuple[dict[str, object], float]:
        """The task, with an events WebSocket open meanwhile (a watching page)."""
        url = stack.gateway_url.replace("http", "ws") + "/ws/events"
        headers = {"Authorization": f"Bearer {stack.token}"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.recv()  # the takeover notice: the socket is in the gateway's hands
            watching = fig(
                await asyncio.to_thread(scrape, gateway_metrics, stack.token),
                "selfagent_gateway_websockets",
                kind="events",
            )
            reply = await asyncio.to_thread(chat, stack, "press escape")
        return reply, watching

    reply, watching = asyncio.run(run_watched())
    assert reply["status"] == "succeeded", reply
    assert watching == fig(gateway_before, "selfagent_gateway_websockets", kind="events") + 1

    after = scrape_all(stack)

    def grew(service: str, name: str, by: float | None = None, **labels: str) -> None:
        old = fig(before[service], name, **labels)
        new = fig(after[service], name, **labels)
        if by is None:
            assert new > old, (service, name, labels, old, new)
        else:
            assert new == old + by, (service, name, labels, old, new)

    planner = "planner"
    grew(planner, "selfagent_planner_tasks_total", 1, outcome="succeeded")
    grew(planner, "selfagent_planner_tasks_total", 0, outcome="failed")
    grew(planner, "selfagent_planner_step_phase_seconds_count", 3, phase="model")
    grew(planner, "selfagent_planner_step_phase_seconds_count", 1, phase="grounding")
    grew(planner, "selfagent_planner_step_phase_seconds_count", 1, phase="action")
    grew(planner, "selfagent_planner_step_phase_seconds_count", 1, phase="settle")
    grew(planner, "selfagent_planner_step_phase_seconds_sum", phase="model")
    grew(planner, "selfagent_model_request_seconds_count", 3, outcome="ok")
    grew(planner, "selfagent_model_tokens_total", kind="prompt")
    grew(planner, "selfagent_model_tokens_total", kind="completion")

    grew("grounder", "selfagent_grounder_queue_wait_seconds_count", 1)
    grew("grounder", "selfagent_grounder_request_seconds_count", 1, outcome="not_found")
    assert fig(after["grounder"], "selfagent_grounder_in_flight") == 0

    grew("actuator", "selfagent_actuator_action_seconds_count", 1, kind="key")
    grew("actuator", "selfagent_actuator_action_seconds_sum", kind="key")
    assert fig(after["actuator"], "selfagent_actuator_approvals_pending") == 0

    # The session keeps its desktop after the task; closing the session gives it back.
    assert fig(after["provisioner"], "selfagent_provisioner_sandboxes", state="leased") == 1
    assert fig(after["provisioner"], "selfagent_provisioner_sandboxes", state="warm") == 0

    gateway_after = scrape(gateway_metrics, stack.token)
    relayed = "selfagent_gateway_events_relayed_total"
    # At least started, planned and executed twice, finished.
    assert fig(gateway_after, relayed) >= fig(gateway_before, relayed) + 6
    assert fig(gateway_after, "selfagent_gateway_websockets", kind="events") == fig(
        gateway_before, "selfagent_gateway_websockets", kind="events"
    )

    closed = httpx.delete(
        f"{stack.gateway_url}/api/sessions/{reply['session_id']}",
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )
    assert closed.status_code == 200, closed.text
    wait_for("the desktop given back", lambda: sandboxes(stack, "leased") == 0)
