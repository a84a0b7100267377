"""The planner's start-up canary against the scripted VLM, over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from selfagent.llm import LLMClient
from selfagent.planner.canary import BUTTON, HEIGHT, WIDTH, run_canary
from selfagent.planner.config import Settings
from selfagent.planner.families import get_family
from selfagent.planner.vision import NO_IMAGES
from tests.harness.fakellm import FakeLLM, estimate_usage

CENTRE = ((BUTTON[0] + BUTTON[2]) // 2, (BUTTON[1] + BUTTON[3]) // 2)


@pytest.fixture(scope="module")
def vlm() -> Iterator[FakeLLM]:
    server = FakeLLM(usage=estimate_usage).start()
    yield server
    server.stop()


@pytest.fixture
async def llm(vlm: FakeLLM) -> AsyncIterator[LLMClient]:
    vlm.reset()
    async with LLMClient(base_url=vlm.base_url, model="m", max_attempts=1) as client:
        yield client


def settings(vlm: FakeLLM, model: str, family: str = "auto") -> Settings:
    return Settings(llm_api_base_url=vlm.base_url, llm_model=model, family=family)


def tars_click(width: int, height: int) -> dict[str, Any]:
    """UI-TARS-1.5 clicking the button, in pixels of an image of that size."""
    x, y = round(CENTRE[0] * width / WIDTH), round(CENTRE[1] * height / HEIGHT)
    return {
        "content": f"Thought: OK it.\nAction: click(start_box='<|box_start|>({x},{y})<|box_end|>')"
    }


async def test_the_right_family_agrees(
    vlm: FakeLLM, llm: LLMClient, caplog: pytest.LogCaptureFixture
) -> None:
    vlm.push(tars_click(1288, 728))
    with caplog.at_level(logging.INFO, logger="selfagent.planner.canary"):
        result = await run_canary(settings(vlm, "UI-TARS-1.5-7B"), llm)
    assert result.agrees and result.takes_images, result
    assert not result.warnings
    request = vlm.requests[0]
    # It was asked in the family's own format, with its recommended sampling.
    assert request["messages"][0]["content"].startswith("You are a GUI agent.")
    assert request["max_tokens"] == 400 and "tools" not in request
    assert "agree" in caplog.text and "NOT" not in caplog.text


async def test_a_tars_model_read_as_tools_is_named_plainly(
    vlm: FakeLLM, llm: LLMClient, caplog: pytest.LogCaptureFixture
) -> None:
    vlm.push(tars_click(1280, 720))
    with caplog.at_level(logging.WARNING, logger="selfagent.planner.canary"):
        result = await run_canary(settings(vlm, "UI-TARS-1.5-7B", "tools"), llm)
    assert not result.agrees
    assert "LLM_MODEL 'UI-TARS-1.5-7B' looks like UI-TARS-1.5 but PLANNER_FAMILY=tools" in (
        caplog.text
    )
    assert "answers like UI-TARS-1.5" in result.detail
    assert "set PLANNER_FAMILY=uitars" in result.detail


async def test_a_wrong_coordinate_system_misses_the_button(vlm: FakeLLM, llm: LLMClient) -> None:
    # A 1.5 model answers in pixels; read as 1.0 thousandths the click lands elsewhere.
    vlm.push(tars_click(1280, 720))
    result = await run_canary(settings(vlm, "my-agent", "uitars-1.0"), llm)
    assert not result.agrees
    assert "coordinate system may be wrong" in result.detail


async def test_a_text_only_llama_cpp_model_is_told_in_plain_words(
    vlm: FakeLLM, llm: LLMClient, caplog: pytest.LogCaptureFixture
) -> None:
    vlm.push(
        {"status": 400, "body": {"error": {"message": "maximum context length is 8192 tokens"}}}
    )
    with caplog.at_level(logging.WARNING, logger="selfagent.planner.canary"):
        result = await run_canary(settings(vlm, "qwen2.5-7b-instruct", "tools"), llm)
    assert result.takes_images is False and result.detail == NO_IMAGES
    assert NO_IMAGES in caplog.text
    assert "8192" not in caplog.text


async def test_silently_dropped_images_are_noticed(vlm: FakeLLM, llm: LLMClient) -> None:
    # The server answered, but its usage counts only the text: the image never reached the model.
    reply = tars_click(1288, 728) | {"usage": {"prompt_tokens": 350, "completion_tokens": 20}}
    vlm.push(reply)
    result = await run_canary(settings(vlm, "UI-TARS-1.5-7B"), llm)
    assert result.takes_images is False
    assert any(NO_IMAGES in w and "350 prompt tokens" in w for w in result.warnings), result


async def test_every_native_family_agrees_with_its_own_answer(vlm: FakeLLM, llm: LLMClient) -> None:
    answers = {
        "qwen2.5": lambda w, h: (
            '<tool_call>\n{"name": "computer_use", "arguments": {"action": '
            f'"left_click", "coordinate": [{round(CENTRE[0] * w / WIDTH)}, '
            f"{round(CENTRE[1] * h / HEIGHT)}]}}}}\n</tool_call>"
        ),
        "qwen3": lambda w, h: (
            '<tool_call>\n{"name": "computer_use", "arguments": {"action": '
            f'"left_click", "coordinate": [{round(CENTRE[0] * 1000 / WIDTH)}, '
            f"{round(CENTRE[1] * 1000 / HEIGHT)}]}}}}\n</tool_call>"
        ),
        "opencua": lambda w, h: (
            "## Thought:\nOK.\n\n## Action:\nClick OK.\n\n## Code:\n"
            f"```python\npyautogui.click(x={round(CENTRE[0] * w / WIDTH)}, "
            f"y={round(CENTRE[1] * h / HEIGHT)})\n```"
        ),
        "seed": lambda w, h: (
            "Thought: OK.\nAction: click(point='<point>"
            f"{round(CENTRE[0] * 1000 / WIDTH)} {round(CENTRE[1] * 1000 / HEIGHT)}</point>')"
        ),
    }
    for name, answer in answers.items():
        w, h = get_family(name).image_size(WIDTH, HEIGHT)
        vlm.reset()
        vlm.push({"content": answer(w, h)})
        result = await run_canary(settings(vlm, "custom", name), llm)
        assert result.agrees and result.takes_images, (name, result)
