"""The planner's task loop under faults, on a real nats-server and a real desktop.

Real parts: nats-server (JetStream), Xvnc + Xfce, the actuator and the
grounder (in-process, talking over NATS), the planner service itself. Only
the models are scripted: one FakeLLM for the planner, one for the grounding
VLM. Tasks go in through the tasks work queue and results come back as
session events, exactly as the gateway sees them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from PIL import Image

from selfagent.bus.natsd import EmbeddedNats
from selfagent.gateway.tests.inprocess import AppOnBus, app_on_bus
from selfagent.gateway.tests.inprocess import settings as gateway_settings
from selfagent.grounder.config import Settings as GrounderSettings
from selfagent.grounder.service import build as build_grounder
from selfagent.planner.config import Settings
from selfagent.planner.service import PlannerService, build
from selfagent.schemas import TaskSubmitted
from selfagent.schemas.trajectory import TrajectoryStep
from tests.harness.actuator import running_actuator
from tests.harness.desktop import Desktop, start_desktop
from tests.harness.fakellm import FakeLLM, tool_call
from tests.harness.tasks import Outcome, RunningTask, session_state

pytestmark = [pytest.mark.desktop, pytest.mark.asyncio(loop_scope="session")]

SANDBOX = "runner"
# "No hang" bound for one task; the slowest scripted task takes a few seconds.
TASK_BOUND = 60.0


def computer(**arguments: Any) -> dict[str, Any]:
    return tool_call("computer", arguments)


DONE = computer(action="done", message="All done.")
REFUSE = {"content": "Action: click(point='<point>-1 -1</point>')"}


# --- the real parts -----------------------------------------------------------


@pytest.fixture(scope="module")
def nats_server() -> Iterator[EmbeddedNats]:
    server = EmbeddedNats().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def desktop() -> Iterator[Desktop]:
    d = start_desktop()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vlm() -> Iterator[FakeLLM]:
    server = FakeLLM(default=REFUSE).start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def services(
    nats_server: EmbeddedNats, desktop: Desktop, vlm: FakeLLM
) -> AsyncIterator[None]:
    async with running_actuator(nats_server.url, desktop, SANDBOX):
        grounder = build_grounder(
            GrounderSettings(
                nats_url=nats_server.url,
                api_base_url=vlm.base_url,
                model="UI-TARS-1.5-7B",
                family="ui-tars-1.5",
                timeout=3.0,
                retries=0,
                deadline=5.0,
                canary=False,
            )
        )
        await grounder.start()
        yield
        await grounder.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def planner(
    nats_server: EmbeddedNats, llm: FakeLLM, services: None
) -> AsyncIterator[PlannerService]:
    settings = Settings(
        nats_url=nats_server.url,
        llm_api_base_url=llm.base_url,
        llm_model="fake-planner",
        mode="grounded",
        llm_timeout=2.0,
        llm_max_attempts=2,
        max_invalid_replies=3,
        observe_timeout=5.0,
        ground_timeout=10.0,
        act_timeout=15.0,
        max_wall_seconds=120.0,
        # The canary would take the first scripted reply.
        canary=False,
    )
    service = build(settings)
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def bus(nats_server: EmbeddedNats, planner: PlannerService) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.3)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gateway(nats_server: EmbeddedNats) -> AsyncIterator[AppOnBus]:
    async with app_on_bus(gateway_settings(nats_server.url)) as app:
        yield app


@pytest.fixture
def fresh(llm: FakeLLM, vlm: FakeLLM, planner: PlannerService) -> Iterator[PlannerService]:
    """Clean scripts, and the planner's settings back as they were after the test."""
    llm.reset()
    vlm.reset(default=REFUSE)
    original = planner.settings
    yield planner
    planner.settings = original
    # A test that failed half-way must not leave a held task behind for the next.
    for control in list(planner.controls.values()):
        control.apply("stop")


# --- driving tasks ------------------------------------------------------------


async def submit(bus: NatsClient, prompt: str = "do it", **fields: Any) -> RunningTask:
    task = TaskSubmitted(prompt=prompt, sandbox_id=SANDBOX, **fields)
    return await RunningTask(bus, task, bound=TASK_BOUND).start()


async def run_task(bus: NatsClient, prompt: str = "do it", **fields: Any) -> Outcome:
    return await (await submit(bus, prompt, **fields)).outcome()


async def assert_serving(bus: NatsClient, llm: FakeLLM) -> None:
    """The planner still takes and finishes tasks after whatever happened before."""
    llm.reset()
    llm.push(computer(action="move", x=100, y=100), computer(action="done", message="ok again"))
    outcome = await run_task(bus, "are you still there?")
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert outcome.finished["reply"] == "ok again"


def images_in(request: dict[str, Any]) -> int:
    return sum(
        1
        for message in request["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    )


def last_text(request: dict[str, Any]) -> str:
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content)


async def wait_requests(fake: FakeLLM, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.requests) < count:
        assert time.monotonic() < deadline, f"only {len(fake.requests)} model calls"
        await asyncio.sleep(0.05)


# --- context ------------------------------------------------------------------


async def test_context_keeps_recent_screenshots_and_older_steps_as_text(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    most = fresh.settings.max_screenshots
    assert most == 6 and fresh.settings.screenshot_window == "append"
    moves = [computer(action="move", x=200 + 40 * i, y=300) for i in range(8)]
    llm.push(*moves, computer(action="done"))
    outcome = await run_task(bus, "wander around")

    assert outcome.finished["status"] == "succeeded"
    # A done without a message still gives the chat a reply.
    assert outcome.finished["reply"].strip()
    assert outcome.finished["steps"] == 9
    assert len(llm.requests) == 9
    # Call n (0-based) has n past steps. Images grow one a step up to 6, then
    # the window drops back to the newest two and grows again.
    assert [images_in(r) for r in llm.requests] == [1, 2, 3, 4, 5, 6, 2, 3, 4]
    # Between drops a request repeats the last one (but its closing ask) and
    # adds to it: what a server's prefix cache reuses.
    for n in (1, 2, 3, 4, 5, 7, 8):
        before, after = llm.requests[n - 1]["messages"], llm.requests[n]["messages"]
        assert after[: len(before) - 1] == before[:-1], f"request {n} rewrote its prefix"
    last = llm.requests[-1]
    text = json.dumps(last["messages"])
    # Older steps are still there as text, the oldest included.
    for n in range(1, 9):
        assert f"Step {n} result: ok" in text
    said = [json.loads(m["content"]) for m in last["messages"] if m["role"] == "assistant"]
    assert [(a["action"], a["x"]) for a in said] == [("move", 200 + 40 * i) for i in range(8)]
    assert "Screenshot before step 5:" not in text and "Screenshot before step 6:" in text
    assert "Screenshot before step 9:" in text  # the current one, as it will stay

    # The session's progress is readable from the KV bucket by anyone on the bus.
    state = await session_state(bus, outcome.finished["session_id"])
    assert state["status"] == "succeeded" and state["steps"] == 9
    assert state["tokens"] == 9 * 120 and state["prompt"] == "wander around"
    assert state["task_id"] == outcome.finished["task_id"]


async def test_each_step_carries_its_model_calls_usage_and_the_task_its_total(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    # Each reply reports its own usage, so a step showing another's is caught.
    def used(reply: dict[str, Any], prompt: int, completion: int) -> dict[str, Any]:
        return {**reply, "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}

    llm.push(
        used(computer(action="move", x=200, y=200), 1000, 7),
        used(computer(action="move", x=220, y=200), 2000, 9),
        used(DONE, 3000, 11),
    )
    outcome = await run_task(bus, "count tokens")
    planned = outcome.kinds("step.planned")
    assert [(p["step"], p["prompt_tokens"], p["completion_tokens"]) for p in planned] == [
        (1, 1000, 7),
        (2, 2000, 9),
        (3, 3000, 11),
    ]
    assert all(p["model_ms"] > 0 for p in planned)
    finished = outcome.finished
    assert (finished["prompt_tokens"], finished["completion_tokens"]) == (6000, 27)
    assert finished["tokens"] == 6027
    state = await session_state(bus, finished["session_id"])
    assert (state["tokens"], state["prompt_tokens"], state["completion_tokens"]) == (6027, 6000, 27)


def last_image(request: dict[str, Any]) -> bytes:
    """The newest screenshot a model request carries, decoded."""
    urls = [
        part["image_url"]["url"]
        for message in request["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]
    return base64.b64decode(urls[-1].split(",", 1)[1])


async def test_each_steps_screenshots_are_kept_and_served(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient, gateway: AppOnBus
) -> None:
    llm.push(
        computer(action="move", x=250, y=250),
        computer(action="move", x=300, y=260),
        DONE,
    )
    outcome = await run_task(bus, "look around")
    assert outcome.finished["status"] == "succeeded"
    sid, tid = outcome.finished["session_id"], outcome.finished["task_id"]
    base = f"/api/sessions/{sid}/steps"
    async with gateway.client() as http:
        for step in (1, 2, 3):
            res = await http.get(f"{base}/{step}/screenshot")
            assert res.status_code == 200, res.text
            assert res.headers["content-type"] == "image/jpeg"
            # Exactly the image the model was sent for that step.
            assert res.content == last_image(llm.requests[step - 1]), f"step {step}"
        for step in (1, 2):
            res = await http.get(f"{base}/{step}/screenshot", params={"when": "after"})
            assert res.status_code == 200 and res.content[:3] == b"\xff\xd8\xff"
            with Image.open(io.BytesIO(res.content)) as image:
                assert image.size[0] > 100 and image.size[1] > 100
        # done has nothing after it; step 4 never was.
        assert (await http.get(f"{base}/3/screenshot", params={"when": "after"})).status_code == 404
        assert (await http.get(f"{base}/4/screenshot")).status_code == 404
        assert (await http.get(f"{base}/1/screenshot", params={"when": "later"})).status_code == 422
        own = await http.get(f"{base}/1/screenshot", params={"task_id": tid})
        assert own.status_code == 200 and own.content == last_image(llm.requests[0])
        assert "immutable" in own.headers["cache-control"]
        other = await http.get(f"{base}/1/screenshot", params={"task_id": "no-such-task"})
        assert other.status_code == 404

    # The same steps as a trajectory: a zip of steps.jsonl and the images.
    async with gateway.client() as http:
        res = await http.get(f"/api/sessions/{sid}/trajectory")
        assert res.status_code == 200, res.text
        assert res.headers["content-type"] == "application/zip"
        missing = await http.get("/api/sessions/never-was/trajectory")
        assert missing.status_code == 404
    with zipfile.ZipFile(io.BytesIO(res.content)) as archive:
        names = set(archive.namelist())
        lines = archive.read("steps.jsonl").decode().splitlines()
        steps = [TrajectoryStep.model_validate_json(line) for line in lines]
        assert [s.step for s in steps] == [1, 2, 3]
        assert json.loads(archive.read("schema/TrajectoryStep.json"))["title"] == "TrajectoryStep"
        for n, line in enumerate(steps, 1):
            assert line.instruction == "look around" and line.task_id == tid
            assert line.images.before in names
            # The image the model saw for this step, byte for byte.
            assert archive.read(line.images.before) == last_image(llm.requests[n - 1])
            assert line.model is not None and line.model.prompt_tokens == 100
            assert line.model.completion_tokens == 20 and line.timings.model_ms > 0
            assert line.model.reply is not None
            said = json.loads(line.model.reply["tool_calls"][0]["arguments"])
            assert said["action"] == ("done" if n == 3 else "move")
            # What was sent, its screenshots named by their paths in the zip.
            sent = json.dumps(line.model.messages)
            assert "data:image" not in sent and line.images.before in sent
            for earlier in steps[: n - 1]:
                assert earlier.images.before is not None and earlier.images.before in sent
        first, last = steps[0], steps[2]
        assert first.action.action == "move" and first.executed is not None
        assert first.result is not None and first.result.ok
        assert first.images.after in names and first.timings.duration_ms > 0
        assert last.action.action == "done" and last.result is None
        assert last.images.after is None and last.task_status == "succeeded"

    # With no retention nothing is kept.
    fresh.settings = fresh.settings.model_copy(update={"screenshot_retention_days": 0})
    llm.reset()
    llm.push(computer(action="move", x=250, y=250), DONE)
    outcome = await run_task(bus, "leave no pictures")
    assert outcome.finished["status"] == "succeeded"
    async with gateway.client() as http:
        res = await http.get(f"/api/sessions/{outcome.finished['session_id']}/steps/1/screenshot")
        assert res.status_code == 404


# --- the model endpoint misbehaving ------------------------------------------


async def test_429_with_retry_after_is_retried_then_succeeds(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    llm.push(
        {"status": 429, "headers": {"Retry-After": "0.5"}, "body": {"error": {"message": "slow"}}},
        computer(action="done", message="after the rate limit"),
    )
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert outcome.finished["reply"] == "after the rate limit"
    assert len(llm.requests) == 2
    await assert_serving(bus, llm)


async def test_500_is_retried(fresh: PlannerService, llm: FakeLLM, bus: NatsClient) -> None:
    llm.push(
        {"status": 500, "body": {"error": {"message": "model crashed"}}},
        computer(action="done", message="after the 500"),
    )
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert len(llm.requests) == 2
    await assert_serving(bus, llm)


async def test_500_every_time_fails_with_the_server_error(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    boom = {"status": 503, "body": {"error": {"message": "overloaded"}}}
    llm.push(boom, boom)
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "failed"
    assert outcome.finished["error"]["code"] == "llm_error"
    assert "503" in outcome.finished["reply"] and "overloaded" in outcome.finished["reply"]
    await assert_serving(bus, llm)


async def test_hang_past_the_timeout_fails_naming_the_timeout(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    hang = {"delay": 4.0, **DONE}
    llm.push(hang, hang)
    started = time.monotonic()
    outcome = await run_task(bus)
    elapsed = time.monotonic() - started
    assert outcome.finished["status"] == "failed"
    assert outcome.finished["error"]["code"] == "llm_error"
    assert "timeout" in outcome.finished["reply"], outcome.finished["reply"]
    assert "2.0s" in outcome.finished["reply"]
    # Two attempts of 2 s each plus a backoff: bounded well below the hang.
    assert elapsed < 20, elapsed
    assert not outcome.kinds("step.executed")
    await assert_serving(bus, llm)


async def test_truncated_body_is_retried(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    llm.push(
        {"raw": b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"ind'},
        computer(action="done", message="after the truncation"),
    )
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert outcome.finished["reply"] == "after the truncation"
    assert len(llm.requests) == 2
    await assert_serving(bus, llm)


# --- the model saying nonsense ------------------------------------------------


async def test_unknown_tool_and_action_are_told_to_the_model(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    llm.push(
        tool_call("frobnicate", {"level": 11}),
        computer(action="teleport", x=1, y=1),
        computer(action="done", message="recovered"),
    )
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert outcome.finished["reply"] == "recovered"
    assert "not a valid action" in last_text(llm.requests[1])
    assert "frobnicate" in last_text(llm.requests[1])
    assert "teleport" in last_text(llm.requests[2])
    assert not outcome.kinds("step.executed")
    system = [e["text"] for e in outcome.kinds("message") if e["role"] == "system"]
    assert len(system) == 2


async def test_off_screen_is_told_then_fails_after_max_invalid_replies(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    off = computer(action="click", x=5000, y=10)
    llm.push(off, off, off, DONE)
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "failed"
    assert outcome.finished["error"]["code"] == "invalid_action"
    assert "3 times" in outcome.finished["reply"] and "outside" in outcome.finished["reply"]
    assert len(llm.requests) == 3
    assert "outside the screenshot" in last_text(llm.requests[1])
    assert "5000" in last_text(llm.requests[2])
    assert not outcome.kinds("step.executed")
    await assert_serving(bus, llm)


async def test_grounder_not_found_is_told_to_the_model(
    fresh: PlannerService, llm: FakeLLM, vlm: FakeLLM, bus: NatsClient
) -> None:
    llm.push(
        computer(action="click", target="the purple unicorn button"),
        computer(action="done", message="there is no unicorn"),
    )
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert len(vlm.requests) == 1
    executed = outcome.kinds("step.executed")
    assert len(executed) == 1 and not executed[0]["ok"]
    assert executed[0]["error"]["code"] == "not_found"
    assert not outcome.kinds("step.grounded")
    told = json.dumps(llm.requests[1]["messages"])
    assert "could not find" in told and "purple unicorn" in told


# --- budgets ------------------------------------------------------------------


async def test_step_budget(fresh: PlannerService, llm: FakeLLM, bus: NatsClient) -> None:
    llm.reset(default=computer(action="move", x=300, y=300))
    outcome = await run_task(bus, max_steps=2)
    assert outcome.finished["status"] == "failed"
    assert outcome.finished["error"]["code"] == "budget_exhausted"
    assert "step budget" in outcome.finished["reply"]
    assert outcome.finished["steps"] == 2 and len(outcome.kinds("step.executed")) == 2
    await assert_serving(bus, llm)


async def test_wall_time_budget(fresh: PlannerService, llm: FakeLLM, bus: NatsClient) -> None:
    fresh.settings = fresh.settings.model_copy(update={"max_wall_seconds": 2.5})
    llm.reset(default={"delay": 0.8, **computer(action="move", x=300, y=300)})
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "failed"
    assert outcome.finished["error"]["code"] == "budget_exhausted"
    assert "time budget" in outcome.finished["reply"], outcome.finished["reply"]
    fresh.settings = fresh.settings.model_copy(update={"max_wall_seconds": 120.0})
    await assert_serving(bus, llm)


async def test_wall_time_budget_also_bounds_a_model_call(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    fresh.settings = fresh.settings.model_copy(update={"max_wall_seconds": 1.0})
    llm.push({"delay": 1.8, **DONE})
    outcome = await run_task(bus)
    assert outcome.finished["error"]["code"] == "budget_exhausted", outcome.finished
    assert "time budget" in outcome.finished["reply"]
    fresh.settings = fresh.settings.model_copy(update={"max_wall_seconds": 120.0})
    await assert_serving(bus, llm)


async def test_token_budget(fresh: PlannerService, llm: FakeLLM, bus: NatsClient) -> None:
    # The scripted server reports 120 tokens per call; model_copy skips the
    # production floor on purpose so the budget runs out in three calls.
    fresh.settings = fresh.settings.model_copy(update={"max_tokens_per_task": 300})
    llm.reset(default=computer(action="move", x=300, y=300))
    outcome = await run_task(bus)
    assert outcome.finished["status"] == "failed"
    assert outcome.finished["error"]["code"] == "budget_exhausted"
    assert "token budget" in outcome.finished["reply"] and "360" in outcome.finished["reply"]
    assert len(llm.requests) == 3
    # The call that went over the budget is not acted on.
    assert len(outcome.kinds("step.executed")) == 2
    fresh.settings = fresh.settings.model_copy(update={"max_tokens_per_task": 500_000})
    await assert_serving(bus, llm)


# --- controls -----------------------------------------------------------------


async def test_stop_during_a_model_call_ends_the_task_without_acting(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    llm.push({"delay": 5.0, **computer(action="move", x=400, y=400)})
    running = await submit(bus)
    await wait_requests(llm, 1)
    await running.control("stop")
    outcome = await running.outcome()
    assert outcome.finished["status"] == "stopped"
    assert outcome.finished["error"]["code"] == "stopped"
    assert not outcome.kinds("step.planned") and not outcome.kinds("step.executed")
    # The abandoned reply must not reach the desktop later either.
    await asyncio.sleep(5.0)
    assert not [e for e in running.events if e["kind"] == "step.executed"]
    await assert_serving(bus, llm)


async def test_pause_and_resume_take_effect_between_steps(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient
) -> None:
    llm.push(
        {"delay": 1.0, **computer(action="move", x=500, y=300)},
        computer(action="move", x=520, y=320),
        computer(action="done", message="resumed and finished"),
    )
    running = await submit(bus)
    await wait_requests(llm, 1)
    await running.control("pause")
    await running.wait_for("task.state")
    assert running.events[-1]["kind"] == "task.state"
    assert running.events[-1]["state"] == "paused"
    # The reply that was under way when the pause came is not acted on: the
    # person may change the screen while the task is held.
    assert not [e for e in running.events if e["kind"] in ("step.planned", "step.executed")]
    await asyncio.sleep(1.5)
    assert len(llm.requests) == 1, "the model was called while paused"
    assert running.events[-1]["kind"] == "task.state"
    assert (await session_state(bus, running.task.session_id))["status"] == "paused"
    await running.control("resume")
    outcome = await running.outcome()
    states = [e["state"] for e in outcome.kinds("task.state")]
    assert states == ["paused", "running"]
    assert outcome.finished["status"] == "succeeded"
    assert [e["action"]["x"] for e in outcome.kinds("step.executed")] == [520]
    assert len(llm.requests) == 3
    assert "paused or took over" in last_text(llm.requests[1])


async def test_takeover_and_release(fresh: PlannerService, llm: FakeLLM, bus: NatsClient) -> None:
    llm.push(
        {"delay": 1.0, **computer(action="move", x=500, y=300)},
        computer(action="done", message="back in control"),
    )
    running = await submit(bus)
    await wait_requests(llm, 1)
    await running.control("takeover")
    await running.wait_for("task.state")
    assert running.events[-1]["state"] == "takeover"
    await running.control("release")
    outcome = await running.outcome()
    assert [e["state"] for e in outcome.kinds("task.state")] == ["takeover", "running"]
    assert outcome.finished["reply"] == "back in control"


async def test_stop_while_paused(fresh: PlannerService, llm: FakeLLM, bus: NatsClient) -> None:
    llm.push({"delay": 1.0, **computer(action="move", x=500, y=300)}, DONE)
    running = await submit(bus)
    await wait_requests(llm, 1)
    await running.control("pause")
    await running.wait_for("task.state")
    await running.control("stop")
    outcome = await running.outcome()
    assert outcome.finished["status"] == "stopped"
    assert len(llm.requests) == 1
    await assert_serving(bus, llm)


# --- the broker going away ----------------------------------------------------


async def test_broker_restart_mid_task(
    fresh: PlannerService, llm: FakeLLM, bus: NatsClient, nats_server: EmbeddedNats
) -> None:
    llm.push(
        # Under the 2 s per-call timeout, so the reply is not retried.
        {"delay": 1.2, **computer(action="move", x=600, y=350)},
        computer(action="done", message="survived the restart"),
    )
    running = await submit(bus)
    await wait_requests(llm, 1)
    await asyncio.to_thread(nats_server.restart)
    outcome = await running.outcome()
    assert outcome.finished["status"] == "succeeded", outcome.finished
    assert outcome.finished["reply"] == "survived the restart"
    assert len(llm.requests) == 2
    assert not fresh.controls, (running.task.session_id, list(fresh.controls), fresh.running)
    state = await session_state(bus, running.task.session_id)
    assert state["status"] == "succeeded" and state["steps"] == 2, (
        state,
        outcome.finished,
        len(llm.requests),
        [e["kind"] for e in outcome.events],
    )
    await assert_serving(bus, llm)
