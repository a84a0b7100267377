"""Planner families: what each sends, and how each native reply becomes our actions.

Renderings are pinned twice: structural assertions (roles, which screenshots
go again, the family's own prompt wording) and golden files holding the
exact messages (``golden/<family>.json``; after a deliberate change, review
and regenerate them with ``SELFAGENT_UPDATE_GOLDEN=1``). Replies come from the
scripted VLM over HTTP through the real ``openai`` client, exactly as a
server would return them.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from selfagent.errors import ActionParseError
from selfagent.llm import LLMClient, LLMReply
from selfagent.planner.config import Settings
from selfagent.planner.coords import CoordinateMap, off_screen_problem
from selfagent.planner.families import (
    FAMILY_NAMES,
    Family,
    ParseContext,
    Turn,
    View,
    family_for_model,
    get_family,
    sampling_for,
)
from selfagent.planner.families.calls import calls
from selfagent.planner.families.tools import ToolsFamily
from selfagent.planner.vision import NO_IMAGES, images_rejected
from selfagent.schemas import ClickAction, TypeAction
from tests.harness.fakellm import FakeLLM, tool_call

GOLDEN = Path(__file__).parent / "golden"
SHOT = "data:image/jpeg;base64,{}"
TASK = "Open a terminal and show the date."
NATIVE = ("uitars", "uitars-1.0", "qwen2.5", "qwen3", "opencua", "seed")

# A two-step history in each family's own words: a click that worked, then a
# click whose target could not be found.
HISTORY: dict[str, tuple[str, str]] = {
    "tools": (
        '{"action":"click","x":40,"y":700}',
        '{"action":"click","x":300,"y":200}',
    ),
    "uitars": (
        "Thought: The terminal icon is in the dock.\n"
        "Action: click(start_box='<|box_start|>(40,700)<|box_end|>')",
        "Thought: The window did not open; I click the icon again.\n"
        "Action: click(start_box='<|box_start|>(300,200)<|box_end|>')",
    ),
    "uitars-1.0": (
        "Thought: The terminal icon is in the dock.\n"
        "Action: click(start_box='<|box_start|>(31,972)<|box_end|>')",
        "Thought: I click it again.\nAction: click(start_box='<|box_start|>(234,278)<|box_end|>')",
    ),
    "seed": (
        "Thought: The terminal icon is in the dock.\nAction: click(point='<point>31 972</point>')",
        "Thought: I click it again.\nAction: click(point='<point>234 278</point>')",
    ),
    "qwen2.5": (
        '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
        '"coordinate": [40, 700]}}\n</tool_call>',
        '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
        '"coordinate": [300, 200]}}\n</tool_call>',
    ),
    "qwen3": (
        "Thought: The terminal icon is in the dock.\nAction: Click the terminal icon.\n"
        '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
        '"coordinate": [31, 972]}}\n</tool_call>',
        "Thought: Nothing opened.\nAction: Click the icon again.\n"
        '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
        '"coordinate": [234, 278]}}\n</tool_call>',
    ),
    "opencua": (
        "## Thought:\nThe terminal icon is in the dock.\n\n## Action:\nClick the terminal icon "
        "in the dock.\n\n## Code:\n```python\npyautogui.click(x=40, y=700)\n```",
        "## Thought:\nNothing opened.\n\n## Action:\nClick the terminal icon again.\n\n"
        "## Code:\n```python\npyautogui.click(x=300, y=200)\n```",
    ),
}


def family(name: str) -> Family:
    return get_family(name, mode="direct", keep_screenshots=3)


def history(name: str, steps: int = 2) -> list[Turn]:
    """The family's own reading of its replies, as the runner records them."""
    fam = family(name)
    turns: list[Turn] = []
    for index in range(steps):
        text = HISTORY[name][min(index, 1)]
        parsed = fam.parse(text, [], ParseContext(1288, 728))
        outcome = "FAILED: could not find the button" if index == steps - 1 else "ok"
        turns.append(
            Turn(index + 1, parsed.reply, outcome, SHOT.format(f"STEP{index + 1}"), parsed.summary)
        )
    return turns


def view(name: str, steps: int = 2, feedback: str | None = None) -> View:
    return View(TASK, history(name, steps), SHOT.format("NOW"), 1288, 728, feedback)


def images(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [
        part["image_url"]["url"].split(",", 1)[1]
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


def texts(messages: Sequence[dict[str, Any]]) -> str:
    out: list[str] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out.extend(part.get("text", "") for part in content)
    return "\n".join(out)


def roles(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [message["role"] for message in messages]


# --- golden renderings ----------------------------------------------------------


@pytest.mark.parametrize("name", ["tools", *NATIVE])
def test_golden_rendering_of_a_two_step_history(name: str) -> None:
    messages = family(name).render(view(name))
    path = GOLDEN / f"{name}.json"
    text = json.dumps(messages, indent=1, ensure_ascii=False) + "\n"
    if os.environ.get("SELFAGENT_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run with SELFAGENT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} renders differently from {path.name}"


def test_tools_rendering_is_the_generic_json_conversation() -> None:
    messages = family("tools").render(view("tools"))
    assert roles(messages) == [
        "system",
        *("user", "user", "assistant", "user"),
        *("user", "assistant", "user"),
        *("user", "user"),
    ]
    assert messages[1]["content"] == f"Task: {TASK}"
    assert images(messages) == ["STEP1", "STEP2", "NOW"]
    all_text = texts(messages)
    assert "Screenshot before step 1:" in all_text and "Step 2 result: FAILED" in all_text
    assert "call the `computer` tool" in messages[0]["content"]
    # The current screenshot reads as it will when it is a past step; the ask follows it.
    assert messages[-2]["content"][0]["text"] == "Screenshot before step 3:"
    assert messages[-1]["content"] == "Current screenshot. Reply with exactly one action."


def test_tools_sliding_window_keeps_the_newest_three() -> None:
    sliding = ToolsFamily(window="sliding")
    for steps, expected in ((1, ["STEP1"]), (3, ["STEP2", "STEP3"]), (7, ["STEP6", "STEP7"])):
        turns = history("tools", steps)
        messages = sliding.render(View(TASK, turns, SHOT.format("NOW"), 1288, 728))
        assert images(messages) == [*expected, "NOW"], steps


def test_uitars_rendering_has_no_system_role_and_image_only_turns() -> None:
    messages = family("uitars").render(view("uitars"))
    assert roles(messages) == ["user", "user", "assistant", "user", "assistant", "user", "user"]
    prompt = messages[0]["content"]
    assert prompt.startswith("You are a GUI agent.")
    assert "## Output Format" in prompt and "## Action Space" in prompt and "## Note" in prompt
    assert "click(start_box='<|box_start|>(x1,y1)<|box_end|>')" in prompt
    assert "hotkey(key='ctrl c')" in prompt and "call_user()" in prompt
    assert prompt.endswith(f"## User Instruction\n{TASK}")
    # Screenshots are image-only user turns; replies come back with their box tokens.
    assert messages[1]["content"] == [
        {"type": "image_url", "image_url": {"url": SHOT.format("STEP1")}}
    ]
    assert messages[2]["content"] == HISTORY["uitars"][0]
    # A failed step is said in words before the next screenshot.
    assert messages[5]["content"] == "FAILED: could not find the button"
    assert images(messages) == ["STEP1", "STEP2", "NOW"]


def test_seed_rendering_is_uitars_shaped_with_points() -> None:
    messages = family("seed").render(view("seed"))
    assert roles(messages) == roles(family("uitars").render(view("uitars")))
    prompt = messages[0]["content"]
    assert "click(point='<point>x1 y1</point>')" in prompt and "start_box" not in prompt
    assert "call_user" not in prompt
    assert messages[2]["content"] == HISTORY["seed"][0]


def test_qwen25_rendering_is_one_screenshot_and_steps_as_text() -> None:
    messages = family("qwen2.5").render(view("qwen2.5"))
    assert roles(messages) == ["system", "user"]
    system = messages[0]["content"]
    assert system.startswith("You are a helpful assistant.\n\n# Tools")
    assert "<tools>" in system and '"name": "computer_use"' in system
    assert "The screen's resolution is 1288x728." in system
    assert '"left_click_drag"' in system and '"triple_click"' not in system
    assert images(messages) == ["NOW"]
    query = messages[1]["content"][1]["text"]
    assert query.startswith(f"The user query: {TASK}\nTask progress (You have done the following")
    assert 'Step 1: {"action": "left_click", "coordinate": [40, 700]}; ' in query
    assert "Step 2: " in query and "(FAILED: could not find the button)" in query


def test_qwen3_rendering_keeps_four_earlier_screenshots_on_a_1000_grid() -> None:
    messages = family("qwen3").render(view("qwen3"))
    assert roles(messages) == ["system", "user", "assistant", "user", "assistant", "user", "user"]
    system = messages[0]["content"]
    assert "The screen's resolution is 1000x1000." in system
    assert '"triple_click"' in system and '"answer"' in system and '"hscroll"' in system
    assert "# Response format" in system
    first = messages[1]["content"]
    assert first[0]["image_url"]["url"] == SHOT.format("STEP1")
    assert first[1]["text"].endswith(f"Instruction: {TASK}\n\nPrevious actions:\nNone")
    assert messages[2]["content"].startswith("Thought: The terminal icon is in the dock.")
    assert images(messages) == ["STEP1", "STEP2", "NOW"]


def test_opencua_rendering_is_steps_with_thought_and_action_never_code() -> None:
    messages = family("opencua").render(view("opencua"))
    assert roles(messages) == ["system", "user", "assistant", "user", "assistant", "user", "user"]
    assert messages[0]["content"].startswith("You are a GUI agent.")
    assert "computer.terminate" in messages[0]["content"]
    assert messages[2]["content"] == (
        "# Step 1:\n## Thought:\nThe terminal icon is in the dock.\n\n## Action:\n"
        "Click the terminal icon in the dock.\n"
    )
    assert "pyautogui" not in messages[2]["content"] + messages[4]["content"]
    last = messages[-1]["content"]
    assert last[0]["image_url"]["url"] == SHOT.format("NOW")
    assert last[1]["text"].startswith(f"# Task Instruction:\n{TASK}\n\nPlease generate the next")


# --- context rules ---------------------------------------------------------------

RULES = {
    # screenshots per request (current included), as each model's reference agent sends them
    "tools": 3,
    "uitars": 5,
    "uitars-1.0": 5,
    "seed": 5,
    "qwen2.5": 1,
    "qwen3": 5,
    "opencua": 3,
}


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("steps", [0, 1, 3, 7])
def test_context_rule_keeps_the_newest_screenshots_and_every_step_in_text(
    name: str, steps: int
) -> None:
    turns = history(name, steps) if steps else []
    messages = family(name).render(View(TASK, turns, SHOT.format("NOW"), 1288, 728))
    # tools, the append window: every past screenshot up to 5 (6 with the
    # current one), then again from the newest one after a drop.
    tools_kept = {0: 0, 1: 1, 3: 3, 7: 2}
    kept = tools_kept[steps] if name == "tools" else min(steps, RULES[name] - 1)
    expected = [f"STEP{n}" for n in range(steps - kept + 1, steps + 1)] + ["NOW"]
    assert images(messages) == expected
    # Every earlier step is still there in words, however old.
    said = texts(messages)
    for turn in turns:
        assert (turn.summary or turn.reply) in said or turn.reply in said, (name, turn.step)


def test_opencua_merges_older_steps_into_one_assistant_message() -> None:
    messages = family("opencua").render(view("opencua", steps=5))
    assert roles(messages)[:3] == ["system", "assistant", "user"]
    merged = messages[1]["content"]
    assert merged.count("# Step ") == 3 and merged.startswith("# Step 1:\n## Thought:")
    assert images(messages) == ["STEP4", "STEP5", "NOW"]


def test_qwen3_lists_older_steps_as_previous_actions() -> None:
    messages = family("qwen3").render(view("qwen3", steps=6))
    instruction = messages[1]["content"][1]["text"]
    assert "Previous actions:\nStep 1: Click the terminal icon.\nStep 2: Click the icon" in (
        instruction
    )
    assert images(messages) == ["STEP3", "STEP4", "STEP5", "STEP6", "NOW"]


def test_feedback_reaches_the_current_turn_in_every_family() -> None:
    for name in RULES:
        messages = family(name).render(view(name, feedback="The user answered: blue"))
        last = messages[-1]
        assert last["role"] == "user"
        assert "The user answered: blue" in texts([last]), name


# --- family choice ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("ByteDance-Seed/UI-TARS-1.5-7B", "uitars"),
        ("ui_tars_1.5_7b", "uitars"),
        ("bytedance-research/UI-TARS-7B-DPO", "uitars-1.0"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5"),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3"),
        ("xlangai/OpenCUA-7B", "opencua"),
        ("Seed1.5-VL", "seed"),
        ("gpt-4o", "tools"),
        ("llama3.2-vision", "tools"),
    ],
)
def test_auto_picks_the_family_from_the_model_name(model: str, expected: str) -> None:
    assert family_for_model(model).name == expected
    assert get_family("auto", model).name == expected


def test_family_names_and_the_qwen_alias() -> None:
    assert set(FAMILY_NAMES) == {"auto", "tools", "qwen", *NATIVE}
    assert get_family("qwen", "Qwen3-VL-30B-A3B-Instruct").name == "qwen3"
    assert get_family("qwen", "my-finetune").name == "qwen2.5"
    with pytest.raises(ValueError, match="unknown planner family"):
        get_family("gemini")


def test_sampling_is_the_family_s_unless_set_explicitly() -> None:
    uitars = get_family("uitars")
    assert sampling_for(uitars, Settings()) == {"temperature": 0.0, "max_tokens": 400}
    assert sampling_for(get_family("opencua"), Settings())["top_p"] == 0.9
    explicit = Settings(llm_max_tokens=900)
    assert sampling_for(uitars, explicit) == {"temperature": 0.0, "max_tokens": 900}
    assert sampling_for(get_family("tools"), Settings()) == {}


def test_absolute_families_send_the_smart_resized_size() -> None:
    assert get_family("uitars").image_size(1280, 720) == (1288, 728)
    assert get_family("uitars").image_size(1920, 1080) == (1932, 1092)
    assert get_family("opencua").image_size(1920, 1080) == (1932, 1092)
    # Relative families need no particular size.
    assert get_family("qwen3").image_size(1280, 720) == (1280, 720)
    assert get_family("tools").image_size(1280, 720) == (1280, 720)


# --- coordinates: the one mapping -------------------------------------------------------


def test_coordinate_map_for_pixels_and_thousandths() -> None:
    pixels = CoordinateMap((1288, 728), (1920, 1080))
    assert pixels.point(644, 364) == (960, 540)
    rel = CoordinateMap((1280, 720), (1920, 1080), "rel1000")
    assert rel.point(500, 500) == (960, 540)
    assert rel.point(1000, 1000) == (1919, 1079)
    assert rel.from_screen(960, 540) == (500, 500)
    assert pixels.from_screen(1920, 1080) == (1288, 728)
    click = ClickAction(x=1001, y=5)
    assert "0-1000" in (off_screen_problem(click, 1280, 720, "rel1000") or "")
    assert off_screen_problem(ClickAction(x=1000, y=0), 1280, 720, "rel1000") is None
    assert off_screen_problem(click, 1280, 720, "pixels") is None


# --- replies from the scripted VLM, over HTTP ----------------------------------------------


@pytest.fixture(scope="module")
def vlm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
async def client(vlm: FakeLLM) -> AsyncIterator[LLMClient]:
    vlm.reset()
    async with LLMClient(base_url=vlm.base_url, model="native", max_attempts=1) as llm:
        yield llm


async def ask(client: LLMClient, vlm: FakeLLM, reply: dict[str, Any]) -> LLMReply:
    vlm.push(reply)
    return await client.complete([{"role": "user", "content": "go"}])


def actions_of(name: str, reply: LLMReply, cursor: tuple[int, int] | None = None) -> list[Any]:
    parsed = family(name).parse(reply.content, reply.tool_calls, ParseContext(1288, 728, cursor))
    return [
        a.model_dump(exclude={"id"}, exclude_defaults=True) | {"action": a.action}
        for a in parsed.actions
    ]


def click(x: int, y: int, **extra: Any) -> dict[str, Any]:
    return {"action": "click", "x": x, "y": y, **extra}


TARS_REPLIES: list[tuple[str, list[dict[str, Any]]]] = [
    ("click(start_box='<|box_start|>(412,388)<|box_end|>')", [click(412, 388)]),
    ("click(start_box='(412,388)')", [click(412, 388)]),
    ("click(start_box='(400,380,424,396)')", [click(412, 388)]),
    ("click(point='<point>412 388</point>')", [click(412, 388)]),
    ("left_double(start_box='(10,20)')", [click(10, 20, clicks=2)]),
    ("right_single(start_box='(10,20)')", [click(10, 20, button="right")]),
    ("hover(start_box='(10,20)')", [{"action": "move", "x": 10, "y": 20}]),
    (
        "drag(start_box='(10,20)', end_box='(300,400)')",
        [{"action": "drag", "path": [{"x": 10, "y": 20}, {"x": 300, "y": 400}]}],
    ),
    ("hotkey(key='ctrl c')", [{"action": "key", "keys": "ctrl+c"}]),
    ("hotkey(key='ctrl shift t')", [{"action": "key", "keys": "ctrl+shift+t"}]),
    ("hotkey(key='arrowleft')", [{"action": "key", "keys": "Left"}]),
    ("hotkey(key='enter')", [{"action": "key", "keys": "Return"}]),
    (
        "type(content='ls -la\\n')",
        [{"action": "type", "text": "ls -la"}, {"action": "key", "keys": "Return"}],
    ),
    ("type(content='It\\'s done')", [{"action": "type", "text": "It's done"}]),
    ("type(content='It's done')", [{"action": "type", "text": "It's done"}]),
    ("type(content='two\\nlines')", [{"action": "type", "text": "two\nlines"}]),
    (
        "scroll(start_box='(600,400)', direction='down')",
        [{"action": "scroll", "direction": "down", "amount": 5, "x": 600, "y": 400}],
    ),
    ("scroll(direction='up')", [{"action": "scroll", "direction": "up", "amount": 5}]),
    ("wait()", [{"action": "wait", "seconds": 5.0}]),
    (
        "finished(content='The file is saved.')",
        [{"action": "done", "message": "The file is saved."}],
    ),
    ("finished()", [{"action": "done"}]),
    (
        "click(start_box='(1,2)')\n\ntype(content='abc')",
        [click(1, 2), {"action": "type", "text": "abc"}],
    ),
]


@pytest.mark.parametrize(("action", "expected"), TARS_REPLIES)
async def test_uitars_replies(
    client: LLMClient, vlm: FakeLLM, action: str, expected: list[dict[str, Any]]
) -> None:
    reply = await ask(client, vlm, {"content": f"Thought: I act.\nAction: {action}"})
    assert actions_of("uitars", reply) == expected
    parsed = family("uitars").parse(reply.content, [], ParseContext(1288, 728))
    assert parsed.thought == "I act."


async def test_uitars_call_user_asks_with_its_thought(client: LLMClient, vlm: FakeLLM) -> None:
    reply = await ask(
        client,
        vlm,
        {"content": "Thought: Which file should I delete? I need to ask.\nAction: call_user()"},
    )
    parsed = family("uitars").parse(reply.content, [], ParseContext(1288, 728))
    assert parsed.actions == ()
    assert parsed.question == "Which file should I delete? I need to ask."


async def test_uitars_replay_puts_back_box_tokens(client: LLMClient, vlm: FakeLLM) -> None:
    reply = await ask(
        client, vlm, {"content": "Reflection: fine.\nThought: go\nAction: click(start_box='(5,6)')"}
    )
    parsed = family("uitars").parse(reply.content, [], ParseContext(1288, 728))
    assert parsed.reply == "Thought: go\nAction: click(start_box='<|box_start|>(5,6)<|box_end|>')"


async def test_seed_replies(client: LLMClient, vlm: FakeLLM) -> None:
    cases = [
        ("click(point='<point>383 808</point>')", [click(383, 808)]),
        (
            "drag(start_point='<point>1 2</point>', end_point='<point>3 4</point>')",
            [{"action": "drag", "path": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}],
        ),
        (
            "scroll(point='<point>500 500</point>', direction='left')",
            [{"action": "scroll", "direction": "left", "amount": 5, "x": 500, "y": 500}],
        ),
        ("finished(content='ok')", [{"action": "done", "message": "ok"}]),
    ]
    for action, expected in cases:
        reply = await ask(client, vlm, {"content": f"Thought: t\nAction: {action}"})
        assert actions_of("seed", reply) == expected, action


def qwen_call(arguments: dict[str, Any], prose: str = "") -> dict[str, Any]:
    body = json.dumps({"name": "computer_use", "arguments": arguments})
    return {"content": f"{prose}<tool_call>\n{body}\n</tool_call>"}


QWEN_REPLIES: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    ({"action": "key", "keys": ["ctrl", "c"]}, [{"action": "key", "keys": "ctrl+c"}]),
    ({"action": "key", "keys": ["Return"]}, [{"action": "key", "keys": "Return"}]),
    (
        {"action": "type", "text": "hello\n"},
        [{"action": "type", "text": "hello"}, {"action": "key", "keys": "Return"}],
    ),
    ({"action": "mouse_move", "coordinate": [5, 6]}, [{"action": "move", "x": 5, "y": 6}]),
    ({"action": "left_click", "coordinate": [5, 6]}, [click(5, 6)]),
    ({"action": "left_click"}, [click(100, 200)]),
    ({"action": "right_click", "coordinate": [5, 6]}, [click(5, 6, button="right")]),
    ({"action": "middle_click", "coordinate": [5, 6]}, [click(5, 6, button="middle")]),
    ({"action": "double_click", "coordinate": [5, 6]}, [click(5, 6, clicks=2)]),
    (
        {"action": "left_click_drag", "coordinate": [300, 400]},
        [{"action": "drag", "path": [{"x": 100, "y": 200}, {"x": 300, "y": 400}]}],
    ),
    ({"action": "scroll", "pixels": -5}, [{"action": "scroll", "direction": "down", "amount": 5}]),
    ({"action": "scroll", "pixels": 300}, [{"action": "scroll", "direction": "up"}]),
    ({"action": "wait", "time": 2}, [{"action": "wait", "seconds": 2.0}]),
    ({"action": "terminate", "status": "success"}, [{"action": "done"}]),
    ({"action": "terminate", "status": "failure"}, [{"action": "fail", "reason": "I looked."}]),
]


@pytest.mark.parametrize(("arguments", "expected"), QWEN_REPLIES)
async def test_qwen25_replies(
    client: LLMClient, vlm: FakeLLM, arguments: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    reply = await ask(client, vlm, qwen_call(arguments, "I looked.\n"))
    assert actions_of("qwen2.5", reply, cursor=(100, 200)) == expected


async def test_qwen_native_tool_call_and_qwen3_actions(client: LLMClient, vlm: FakeLLM) -> None:
    native = await ask(
        client, vlm, tool_call("computer_use", {"action": "left_click", "coordinate": [7, 8]})
    )
    assert native.tool_calls and actions_of("qwen2.5", native) == [click(7, 8)]
    cases: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        ({"action": "triple_click", "coordinate": [5, 6]}, [click(5, 6, clicks=3)]),
        ({"action": "hscroll", "pixels": 3}, [{"action": "scroll", "direction": "right"}]),
        ({"action": "answer", "text": "42"}, [{"action": "done", "message": "42"}]),
    ]
    for arguments, expected in cases:
        reply = await ask(client, vlm, qwen_call(arguments, "Thought: t\nAction: do it.\n"))
        assert actions_of("qwen3", reply) == expected, arguments
    parsed = family("qwen3").parse(reply.content, [], ParseContext(1000, 1000))
    assert (parsed.thought, parsed.summary) == ("t", "do it.")
    # Qwen2.5-VL has no triple_click: the model is told what it may use.
    with pytest.raises(ActionParseError, match="unknown action 'triple_click'"):
        actions_of("qwen2.5", await ask(client, vlm, qwen_call(cases[0][0])))


def cua(code: str) -> dict[str, Any]:
    return {
        "content": "## Thought:\nI see the screen.\n\n## Action:\nDo the thing.\n\n"
        f"## Code:\n```python\n{code}\n```"
    }


OPENCUA_REPLIES: list[tuple[str, list[dict[str, Any]]]] = [
    ("pyautogui.click(x=1443, y=343)", [click(1443, 343)]),
    ("pyautogui.click(12, 34, clicks=2)", [click(12, 34, clicks=2)]),
    ("pyautogui.doubleClick(x=1, y=2)", [click(1, 2, clicks=2)]),
    ("pyautogui.rightClick(x=1, y=2)", [click(1, 2, button="right")]),
    ("pyautogui.middleClick(x=1, y=2)", [click(1, 2, button="middle")]),
    ("computer.triple_click(x=1, y=2)", [click(1, 2, clicks=3)]),
    ("pyautogui.moveTo(5, 6)", [{"action": "move", "x": 5, "y": 6}]),
    (
        "pyautogui.moveTo(5, 6)\npyautogui.dragTo(50, 60, duration=0.5)",
        [
            {"action": "move", "x": 5, "y": 6},
            {"action": "drag", "path": [{"x": 5, "y": 6}, {"x": 50, "y": 60}]},
        ],
    ),
    ("pyautogui.scroll(-5)", [{"action": "scroll", "direction": "down", "amount": 5}]),
    (
        "pyautogui.scroll(3, x=10, y=20)",
        [{"action": "scroll", "direction": "up", "x": 10, "y": 20}],
    ),
    ("pyautogui.hscroll(-2)", [{"action": "scroll", "direction": "left", "amount": 2}]),
    ("pyautogui.press('enter')", [{"action": "key", "keys": "Return"}]),
    ("pyautogui.press('tab', presses=3)", [{"action": "key", "keys": "Tab Tab Tab"}]),
    ("pyautogui.hotkey('ctrl', 'c')", [{"action": "key", "keys": "ctrl+c"}]),
    ("pyautogui.write('hello')", [{"action": "type", "text": "hello"}]),
    (
        "pyautogui.typewrite('ls\\n')",
        [{"action": "type", "text": "ls"}, {"action": "key", "keys": "Return"}],
    ),
    ("import time\ntime.sleep(2)", [{"action": "wait", "seconds": 2.0}]),
    ("computer.wait()", [{"action": "wait", "seconds": 20.0}]),
    ("computer.terminate(status='success', answer='42')", [{"action": "done", "message": "42"}]),
    ("computer.terminate(status='fail')", [{"action": "fail", "reason": "I see the screen."}]),
]


@pytest.mark.parametrize(("code", "expected"), OPENCUA_REPLIES)
async def test_opencua_replies(
    client: LLMClient, vlm: FakeLLM, code: str, expected: list[dict[str, Any]]
) -> None:
    reply = await ask(client, vlm, cua(code))
    assert actions_of("opencua", reply) == expected
    parsed = family("opencua").parse(reply.content, [], ParseContext(1288, 728))
    assert parsed.thought == "I see the screen.\nDo the thing."
    assert "pyautogui" not in parsed.reply and parsed.summary == "Do the thing."


# --- malformed replies get the family's own correction -----------------------------------

MALFORMED: list[tuple[str, dict[str, Any], str, str]] = [
    ("tools", {"content": "I will click the button."}, "No action found", "not a valid action"),
    (
        "uitars",
        {"content": "I think I should click the terminal."},
        "no 'Action:' line",
        "Action: click(start_box='<|box_start|>(x1,y1)<|box_end|>')",
    ),
    (
        "uitars",
        {"content": "Thought: t\nAction: teleport(start_box='(1,2)')"},
        "unknown action teleport()",
        "Thought: ",
    ),
    ("uitars", {"content": "Thought: t\nAction: click()"}, "click needs a point", "start_box"),
    (
        "seed",
        {"content": "Thought: t\nAction: scroll(point='<point>1 2</point>')"},
        "scroll needs direction",
        "click(point='<point>x1 y1</point>')",
    ),
    (
        "qwen2.5",
        {"content": "I will click the terminal."},
        "no <tool_call> block",
        '"name": "computer_use"',
    ),
    ("qwen3", qwen_call({"action": "fly"}), "unknown action 'fly'", "<tool_call>"),
    (
        "qwen2.5",
        qwen_call({"action": "left_click_drag", "coordinate": [1, 2]}),
        "mouse_move to the start first",
        "<tool_call>",
    ),
    (
        "opencua",
        {"content": "## Thought:\nhmm\n\n## Action:\nClick it."},
        "no ## Code: block",
        "## Code:\n```python",
    ),
    (
        "opencua",
        cua("import os\nos.system('rm -rf ~')"),
        "os.system() is not an action",
        "## Thought:",
    ),
    (
        "opencua",
        cua("pyautogui.click(x=0.5, y=0.25)"),
        "give pixel coordinates",
        "pyautogui.click(x=123, y=456)",
    ),
]


@pytest.mark.parametrize(("name", "reply", "problem", "format_hint"), MALFORMED)
async def test_malformed_native_replies_get_the_family_s_correction(
    client: LLMClient,
    vlm: FakeLLM,
    name: str,
    reply: dict[str, Any],
    problem: str,
    format_hint: str,
) -> None:
    answer = await ask(client, vlm, reply)
    fam = family(name)
    with pytest.raises(ActionParseError) as caught:
        fam.parse(answer.content, answer.tool_calls, ParseContext(1288, 728))
    assert problem in str(caught.value)
    correction = fam.correction(str(caught.value))
    assert problem in correction and format_hint in correction


# --- images the endpoint cannot take ------------------------------------------------------


def test_images_rejected_recognises_text_only_endpoints() -> None:
    from selfagent.planner.canary import canary_screenshot

    shot = canary_screenshot().data_uri()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Click OK."},
                {"type": "image_url", "image_url": {"url": shot}},
            ],
        }
    ]
    assert images_rejected("400: maximum context length is 8192 tokens", messages)
    assert images_rejected("image input is not supported - hint: load the mmproj", messages)
    # Without images, or when the images would not have fitted anyway, it is
    # a plain context problem, not a missing vision projector.
    assert not images_rejected("maximum context length is 8192 tokens", messages[:0])
    assert not images_rejected("maximum context length is 1024 tokens", messages)
    assert not images_rejected("rate limited", messages)
    assert "vision projector" in NO_IMAGES


# --- replies that once hung or crashed a parser --------------------------------------------


@pytest.mark.timeout(5)
@pytest.mark.parametrize("text", ["click(])", "click(x=])", "click(x=5])", "click(x=[1]])"])
def test_a_stray_bracket_is_an_error_not_a_hang(text: str) -> None:
    with pytest.raises(ActionParseError, match=r"unexpected '\]' in click\(\.\.\.\)"):
        calls(text)


@pytest.mark.timeout(5)
def test_uitars_stray_bracket_after_a_point_is_told_to_the_model() -> None:
    with pytest.raises(ActionParseError, match="unexpected"):
        family("uitars").parse("Action: click(start_box=(100,200)])", [], ParseContext(1288, 728))


@pytest.mark.timeout(5)
def test_opencua_reply_of_only_a_code_block_is_read() -> None:
    parsed = family("opencua").parse(
        "```python\npyautogui.click(x=900, y=470)\n```", [], ParseContext(1288, 728)
    )
    assert parsed.actions == (ClickAction(x=900, y=470, id=parsed.actions[0].id),)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("reply", ["I cannot help with that.", "pyautogui.click(x=900, y=470)", ""])
def test_opencua_reply_without_sections_or_fence_asks_for_code(reply: str) -> None:
    with pytest.raises(ActionParseError, match="no ## Code: block"):
        family("opencua").parse(reply, [], ParseContext(1288, 728))


def qwen_text(arguments: dict[str, Any]) -> str:
    call = {"name": "computer_use", "arguments": arguments}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


# Each of these once escaped the parser as a ValidationError, OverflowError,
# IndexError, TypeError or ValueError and ended the task as an internal error.
UNREADABLE: list[tuple[str, str, str]] = [
    ("uitars", "Action: type(content='" + "a" * 20001 + "')", "at most 20000 characters"),
    ("uitars", "Action: hotkey(key='" + "a " * 150 + "')", "at most 200 characters"),
    ("uitars", "Action: click(start_box='(" + "9" * 400 + ",5)')", "number between"),
    ("seed", "Action: click(point='<point>" + "9" * 400 + " 5</point>')", "number between"),
    ("opencua", cua("pyautogui.click([5])")["content"], "needs one point"),
    ("opencua", cua("pyautogui.click(x={[1]: 2})")["content"], "plain values"),
    ("opencua", cua("pyautogui.click(x=" + "9" * 400 + ", y=5)")["content"], "number between"),
    ("opencua", cua("pyautogui.scroll(1e999)")["content"], "number between"),
    ("qwen2.5", qwen_text({"action": "left_click", "coordinate": [1e999, 5]}), "number"),
]


@pytest.mark.timeout(5)
@pytest.mark.parametrize(("name", "text", "problem"), UNREADABLE)
def test_replies_no_parser_foresaw_are_action_parse_errors(
    name: str, text: str, problem: str
) -> None:
    with pytest.raises(ActionParseError, match=problem):
        family(name).parse(text, [], ParseContext(1288, 728))


class _Breaks(Family):
    """A family whose own reader fails the way an unforeseen reply makes one fail."""

    name = "breaks"
    title = "breaks"

    def __init__(self, fail: Callable[[], object]) -> None:
        self.fail = fail

    def render(self, view: View) -> list[dict[str, Any]]:
        return []

    def read(self, content: str | None, tool_calls: Sequence[Any], context: ParseContext) -> Any:
        return self.fail()


def _raise(error: Exception) -> Callable[[], object]:
    def fail() -> object:
        raise error

    return fail


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (IndexError("list index out of range"), "could not be read"),
        (TypeError("unhashable type: 'dict'"), "could not be read"),
        (ValueError("bad"), "could not be read"),
        (KeyError("arguments"), "could not be read"),
        (OverflowError("cannot convert float infinity to integer"), "too large"),
    ],
)
def test_family_parse_turns_any_parser_failure_into_a_correction(
    error: Exception, problem: str
) -> None:
    with pytest.raises(ActionParseError, match=problem):
        _Breaks(_raise(error)).parse("anything", [], ParseContext(1288, 728))


@pytest.mark.timeout(5)
def test_family_parse_reports_which_bound_an_action_broke() -> None:
    too_long = _Breaks(lambda: TypeAction(text="a" * 20001))
    with pytest.raises(ActionParseError) as caught:
        too_long.parse("", [], ParseContext(1288, 728))
    assert str(caught.value) == (
        "the action is out of bounds: text: String should have at most 20000 characters"
    )


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ctrl +", "ctrl+plus"),
        ("ctrl shift +", "ctrl+shift+plus"),
        ("ctrl++", "ctrl+plus"),
        ("+", "plus"),
        ("ctrl c", "ctrl+c"),
        ("ctrl+c", "ctrl+c"),
        ("ctrl + c", "ctrl+c"),
    ],
)
def test_uitars_hotkey_keeps_the_plus_key(key: str, expected: str) -> None:
    parsed = family("uitars").parse(
        f"Thought: zoom in\nAction: hotkey(key='{key}')", [], ParseContext(1288, 728)
    )
    assert [a.model_dump(exclude={"id"}) for a in parsed.actions] == [
        {"action": "key", "keys": expected}
    ]
