"""The metrics module: its endpoint over real HTTP, the one-line helpers, the groups.

The registry is the process's own and other tests in this process may have
moved it too, so every check is on a change, never on an absolute figure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from selfagent.bus import metrics
from selfagent.bus.natsd import free_port
from selfagent.errors import ConfigError


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_endpoint_serves_the_exposed_groups_only() -> None:
    port = free_port()
    async with metrics.serving("grounder", "127.0.0.1", port) as bound:
        assert bound == port
        metrics.GROUNDER_CONCURRENCY.set(7)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            reply = await client.get("/metrics")
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/plain; version=")
            figures = scraped(reply.text)
            assert figures[("selfagent_grounder_concurrency", frozenset())] == 7
            # The process's own figures come along.
            assert ("process_cpu_seconds_total", frozenset()) in figures

            assert (await client.get("/")).status_code == 200
            assert (await client.get("/nothing")).status_code == 404
            assert (await client.post("/metrics")).status_code == 405
            head = await client.head("/metrics")
            assert head.status_code == 200 and head.content == b""

            # Garbage instead of a request line: refused, and the server lives on.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"nonsense\r\n\r\n")
            await writer.drain()
            assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
            writer.close()
            assert (await client.get("/metrics")).status_code == 200
    # Closed with the context.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


async def test_port_zero_serves_nothing_but_keeps_the_figures() -> None:
    async with metrics.serving("actuator", "127.0.0.1", 0) as bound:
        assert bound is None
    assert b"selfagent_actuator_approvals_pending" in metrics.exposition()


async def test_a_taken_port_names_the_setting() -> None:
    port = free_port()
    async with metrics.serving("planner", "127.0.0.1", port):
        with pytest.raises(ConfigError, match=rf"PLANNER_METRICS_PORT={port}"):
            async with metrics.serving("planner", "127.0.0.1", port, "PLANNER_METRICS_PORT"):
                pass


def test_a_process_lists_only_its_own_service() -> None:
    # A fresh process: this one has exposed every group by now.
    script = (
        "import sys; from selfagent.bus import metrics; metrics.expose('grounder'); "
        "sys.stdout.write(metrics.exposition().decode())"
    )
    text = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    names = {name for name, _ in scraped(text)}
    assert {"selfagent_grounder_in_flight", "selfagent_model_tokens_total"} <= names
    assert "process_resident_memory_bytes" in names
    others = ("selfagent_planner_", "selfagent_actuator_", "selfagent_provisioner_")
    assert not [name for name in names if name.startswith((*others, "selfagent_gateway_"))]


def test_expose_is_idempotent_and_knows_the_services() -> None:
    for service in metrics.SERVICES:
        metrics.expose(service)
        metrics.expose(service)
    with pytest.raises(ValueError, match="no metrics for a service named 'nope'"):
        metrics.expose("nope")
    text = metrics.exposition().decode()
    # Every outcome and phase is listed before anything happened to it.
    for outcome in metrics.TASK_OUTCOMES:
        assert f'selfagent_planner_tasks_total{{outcome="{outcome}"}}' in text
    for phase in metrics.STEP_PHASES:
        assert f'selfagent_planner_step_phase_seconds_count{{phase="{phase}"}}' in text


def test_step_helpers_split_the_actuator_timing() -> None:
    metrics.expose("planner")
    action = value("selfagent_planner_step_phase_seconds_sum", phase="action")
    settle = value("selfagent_planner_step_phase_seconds_sum", phase="settle")
    model = value("selfagent_planner_step_phase_seconds_count", phase="model")
    metrics.step_executed(duration_ms=300.0, settle_ms=120.0)
    metrics.phase("model", time.monotonic() - 2.0)
    assert value("selfagent_planner_step_phase_seconds_sum", phase="action") == pytest.approx(
        action + 0.18
    )
    assert value("selfagent_planner_step_phase_seconds_sum", phase="settle") == pytest.approx(
        settle + 0.12
    )
    assert value("selfagent_planner_step_phase_seconds_count", phase="model") == model + 1
    # In the 2.5 s bucket, not in the 1 s one.
    assert value("selfagent_planner_step_phase_seconds_bucket", phase="model", le="2.5") > value(
        "selfagent_planner_step_phase_seconds_bucket", phase="model", le="1.0"
    )


def test_model_request_counts_errors_and_tokens() -> None:
    ok = value("selfagent_model_request_seconds_count", outcome="ok")
    failed = value("selfagent_model_request_seconds_count", outcome="error")
    prompt = value("selfagent_model_tokens_total", kind="prompt")
    with metrics.model_request():
        pass
    with pytest.raises(RuntimeError), metrics.model_request():
        raise RuntimeError("endpoint down")
    metrics.model_tokens(100, 7)
    assert value("selfagent_model_request_seconds_count", outcome="ok") == ok + 1
    assert value("selfagent_model_request_seconds_count", outcome="error") == failed + 1
    assert value("selfagent_model_tokens_total", kind="prompt") == prompt + 100


def test_grounder_helpers() -> None:
    waits = value("selfagent_grounder_queue_wait_seconds_count")
    slow = value("selfagent_grounder_queue_wait_seconds_bucket", le="0.5")
    metrics.queued_since(datetime.now(UTC) - timedelta(seconds=3))
    # A sender whose clock is ahead: counted as no wait, not a negative one.
    metrics.queued_since(datetime.now(UTC) + timedelta(seconds=3))
    assert value("selfagent_grounder_queue_wait_seconds_count") == waits + 2
    assert value("selfagent_grounder_queue_wait_seconds_bucket", le="0.5") == slow + 1

    before = {
        outcome: value("selfagent_grounder_request_seconds_count", outcome=outcome)
        for outcome in ("found", "not_found", "error")
    }
    started = time.monotonic()
    metrics.grounded(started, ok=True, found=True)
    metrics.grounded(started, ok=True, found=False)
    metrics.grounded(started, ok=False, found=False)
    for outcome, count in before.items():
        assert value("selfagent_grounder_request_seconds_count", outcome=outcome) == count + 1


def test_sandboxes_are_counted_at_scrape_time() -> None:
    metrics.expose("provisioner")
    states = ["warm", "leased", "leased"]
    metrics.watch_sandboxes(lambda: states, lambda: 4)
    assert value("selfagent_provisioner_sandboxes", state="leased") == 2
    assert value("selfagent_provisioner_sandboxes", state="starting") == 0
    assert value("selfagent_provisioner_leases_waiting") == 4
    states.append("starting")
    assert value("selfagent_provisioner_sandboxes", state="starting") == 1


async def test_websocket_gauge_follows_the_endpoint() -> None:
    inside = asyncio.Event()
    leave = asyncio.Event()

    @metrics.websocket("vnc")
    async def endpoint(name: str) -> None:
        assert name == "viewer"
        inside.set()
        await leave.wait()
        raise ConnectionError("the viewer went away")

    before = value("selfagent_gateway_websockets", kind="vnc")
    running = asyncio.create_task(endpoint("viewer"))
    await inside.wait()
    assert value("selfagent_gateway_websockets", kind="vnc") == before + 1
    leave.set()
    with pytest.raises(ConnectionError):
        await running
    assert value("selfagent_gateway_websockets", kind="vnc") == before
    assert endpoint.__name__ == "endpoint"
