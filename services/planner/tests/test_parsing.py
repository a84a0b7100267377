"""Model replies as servers really return them, mapped onto the one action space."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from selfagent.planner.families import ParseContext, get_family
from selfagent.planner.parsing import (
    PIXELS_PER_SCROLL_NOTCH,
    ActionParseError,
    ToolCall,
    normalize_keys,
    parse_action,
    parse_reply,
)
from selfagent.planner.tools import (
    ACTION_SCHEMA_TEXT,
    MODEL_ACTION_NAMES,
    computer_tool,
    system_prompt,
)
from selfagent.schemas import Action, ClickAction


def fields(content: str | None, calls: list[ToolCall] | None = None) -> dict[str, Any]:
    """The parsed action without its generated id and without unset defaults."""
    action = parse_reply(content, calls or []).action
    return action.model_dump(exclude={"id"}, exclude_defaults=True) | {"action": action.action}


def error(content: str | None, calls: list[ToolCall] | None = None) -> str:
    with pytest.raises(ActionParseError) as caught:
        parse_reply(content, calls or [])
    return str(caught.value)


# --------------------------------------------------------------------------- text replies

TEXT_SAMPLES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "qwen-tool-call-from-vllm-with-the-wrong-parser",
        "I need to open a terminal first.\n<tool_call>\n"
        '{"name": "computer", "arguments": {"action": "launch_app", "app": "terminal"}}\n'
        "</tool_call>",
        {"action": "launch_app", "app": "terminal"},
    ),
    (
        "qwen-computer-use-left-click",
        "<tool_call>\n"
        '{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [842, 41]}}'
        "\n</tool_call>",
        {"action": "click", "x": 842, "y": 41},
    ),
    (
        "tool-call-tag-without-closing-tag",
        '<tool_call>\n{"name": "computer", "arguments": {"action": "key", "keys": "ctrl+l"}}',
        {"action": "key", "keys": "ctrl+l"},
    ),
    (
        "tool-call-missing-final-brace",
        '<tool_call>{"name": "computer", "arguments": {"action": "click", "x": 5, "y": 6}'
        "</tool_call>",
        {"action": "click", "x": 5, "y": 6},
    ),
    (
        "qwen3-xml-function-parameters",
        "<tool_call>\n<function=computer>\n<parameter=action>\nscroll\n</parameter>\n"
        "<parameter=direction>\ndown\n</parameter>\n<parameter=amount>\n5\n</parameter>\n"
        "</function>\n</tool_call>",
        {"action": "scroll", "direction": "down", "amount": 5},
    ),
    (
        "fenced-json-with-chatter-before-and-after",
        "The search field is at the top of the page. I'll click it.\n\n```json\n"
        '{"action": "click", "target": "the search field at the top of the page"}\n```\n\n'
        "After that I will type the query.",
        {"action": "click", "target": "the search field at the top of the page"},
    ),
    (
        "fence-without-language",
        'Next:\n```\n{"action": "type", "text": "quarterly report"}\n```',
        {"action": "type", "text": "quarterly report"},
    ),
    (
        "braces-and-quotes-inside-strings",
        'Typing the JSON: {"action": "type", "text": "{\\"a\\": [1, {\\"b\\": \\"}\\"}]} done"}',
        {"action": "type", "text": '{"a": [1, {"b": "}"}]} done'},
    ),
    (
        "stray-brace-in-prose-before-the-action",
        'Press the { key? No. {"action": "key", "keys": "Escape"}',
        {"action": "key", "keys": "Escape"},
    ),
    (
        "prose-object-that-is-not-an-action-comes-first",
        'The dialog says {"status": "saved"}. So: {"action": "done", "message": "Saved."}',
        {"action": "done", "message": "Saved."},
    ),
    (
        "bare-object-tool-named-after-the-action",
        '{"name": "click", "arguments": {"x": 120, "y": 300}}',
        {"action": "click", "x": 120, "y": 300},
    ),
    (
        "parameters-wrapper",
        '{"name": "computer", "parameters": {"action": "open_url", "url": "https://example.org"}}',
        {"action": "open_url", "url": "https://example.org"},
    ),
    (
        "openai-function-envelope-in-text",
        '{"type": "function", "function": {"name": "computer", "arguments": '
        '"{\\"action\\": \\"wait\\", \\"seconds\\": 2}"}}',
        {"action": "wait", "seconds": 2.0},
    ),
    (
        "action-with-nested-parameters",
        '{"action": "shell", "parameters": {"command": "ls -la ~", "timeout": 10}}',
        {"action": "shell", "command": "ls -la ~", "timeout": 10.0},
    ),
    (
        "python-dict-with-single-quotes",
        "{'action': 'click', 'x': 10, 'y': 20, 'button': 'right'}",
        {"action": "click", "x": 10, "y": 20, "button": "right"},
    ),
    (
        "trailing-comma",
        '{"action": "type", "text": "hello",}',
        {"action": "type", "text": "hello"},
    ),
    (
        "coordinates-as-strings",
        '{"action": "click", "x": "640", "y": "360.4"}',
        {"action": "click", "x": 640, "y": 360},
    ),
    (
        "coordinate-string-pair",
        '{"action": "move", "coordinate": "(233, 471)"}',
        {"action": "move", "x": 233, "y": 471},
    ),
    (
        "think-block-then-json",
        "<think>\nThe file menu is open.\n</think>\n"
        '{"action": "click", "target": "Save As... in the File menu"}',
        {"action": "click", "target": "Save As... in the File menu"},
    ),
    (
        "finish-synonym-with-answer",
        '{"action": "finish", "answer": "The capital is Paris."}',
        {"action": "done", "message": "The capital is Paris."},
    ),
    (
        "answer-synonym-with-text",
        '{"action": "answer", "text": "42"}',
        {"action": "done", "message": "42"},
    ),
    (
        "qwen-terminate-success",
        '{"action": "terminate", "status": "success"}',
        {"action": "done"},
    ),
    (
        "qwen-terminate-failure",
        '{"action": "terminate", "status": "failure"}',
        {"action": "fail", "reason": "The task could not be completed."},
    ),
    (
        "fail-with-message",
        '{"action": "fail", "message": "The site needs a login I do not have."}',
        {"action": "fail", "reason": "The site needs a login I do not have."},
    ),
    (
        "key-name-slips",
        '{"action": "key", "keys": "Enter"}',
        {"action": "key", "keys": "Return"},
    ),
    (
        "key-with-hyphen",
        '{"action": "key", "key": "Ctrl-Shift-T"}',
        {"action": "key", "keys": "ctrl+shift+t"},
    ),
    (
        "qwen-key-list",
        '{"action": "key", "keys": ["ctrl", "c"]}',
        {"action": "key", "keys": "ctrl+c"},
    ),
    (
        "scroll-with-direction-in-the-name",
        '{"action": "scroll_down", "target": "the results list"}',
        {"action": "scroll", "direction": "down", "target": "the results list"},
    ),
    (
        "scroll-amount-clamped",
        '{"action": "scroll", "direction": "up", "amount": 500}',
        {"action": "scroll", "direction": "up", "amount": 50},
    ),
    (
        "wait-clamped-to-a-minute",
        '{"action": "wait", "seconds": 300}',
        {"action": "wait", "seconds": 60.0},
    ),
    (
        "drag-with-pairs",
        '{"action": "drag", "path": [[10, 20], [30, 40], [50, 60]]}',
        {
            "action": "drag",
            "path": [{"x": 10, "y": 20}, {"x": 30, "y": 40}, {"x": 50, "y": 60}],
        },
    ),
    (
        "launch-app-with-name",
        '{"action": "launch_app", "name": "firefox"}',
        {"action": "launch_app", "app": "firefox"},
    ),
    (
        "click-with-modifier-string",
        '{"action": "click", "x": 1, "y": 2, "modifiers": "ctrl+shift"}',
        {"action": "click", "x": 1, "y": 2, "modifiers": ["ctrl", "shift"]},
    ),
]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(content, expected) for _, content, expected in TEXT_SAMPLES],
    ids=[name for name, _, _ in TEXT_SAMPLES],
)
def test_text_replies(content: str, expected: dict[str, Any]) -> None:
    assert fields(content) == expected


def test_thought_is_the_text_around_the_action() -> None:
    reply = parse_reply(
        "The Save dialog is open.\n```json\n"
        '{"action": "key", "keys": "Return"}\n```\nThis confirms the file name.',
        [],
    )
    assert reply.source == "json_fence"
    assert "```" not in reply.thought and "Return" not in reply.thought
    assert reply.thought.startswith("The Save dialog is open.")
    assert reply.thought.endswith("This confirms the file name.")


def test_thought_field_inside_json_joins_the_thought() -> None:
    reply = parse_reply(
        '{"thought": "The button is greyed out.", "action": "wait", "seconds": 2}', []
    )
    assert reply.thought == "The button is greyed out."
    assert reply.action.action == "wait"


def test_tool_call_tag_wins_over_an_earlier_json_object() -> None:
    reply = parse_reply(
        'Options were {"action": "scroll", "direction": "down"} or typing.\n'
        '<tool_call>{"name": "computer", "arguments": {"action": "type", "text": "hi"}}'
        "</tool_call>",
        [],
    )
    assert reply.source == "tool_call_tag"
    assert reply.action.action == "type"


def test_each_action_gets_a_fresh_id() -> None:
    first = parse_reply('{"action": "screenshot"}', []).action
    second = parse_reply('{"action": "screenshot"}', []).action
    assert first.id != second.id


# --------------------------------------------------------------------------- native tool calls


def test_native_tool_call_with_content_as_thought() -> None:
    reply = parse_reply(
        "The terminal is focused.",
        [ToolCall("computer", '{"action": "type", "text": "ls -la\\n"}', "call_1")],
    )
    assert reply.source == "tool_call"
    assert reply.thought == "The terminal is focused."
    assert reply.action.model_dump(include={"action", "text"}) == {
        "action": "type",
        "text": "ls -la\n",
    }


def test_native_tool_call_takes_precedence_over_text() -> None:
    reply = parse_reply(
        '{"action": "click", "x": 1, "y": 1}',
        [ToolCall("computer", '{"action": "key", "keys": "super"}')],
    )
    assert reply.action.action == "key"


def test_only_the_first_native_call_is_used() -> None:
    calls = [
        ToolCall("computer", '{"action": "click", "target": "the address bar"}'),
        ToolCall("computer", '{"action": "type", "text": "example.org"}'),
    ]
    assert parse_reply(None, calls).action.action == "click"


def test_native_call_named_after_the_action() -> None:
    assert fields(None, [ToolCall("double_click", '{"x": 50, "y": 60}')]) == {
        "action": "click",
        "x": 50,
        "y": 60,
        "clicks": 2,
    }


def test_double_encoded_arguments() -> None:
    encoded = json.dumps(json.dumps({"action": "key", "keys": "F5"}))
    assert fields(None, [ToolCall("computer", encoded)]) == {"action": "key", "keys": "F5"}


def test_empty_arguments_give_a_clear_error() -> None:
    message = error(None, [ToolCall("computer", "")])
    assert message.startswith('The call has no "action" field')


def test_truncated_native_arguments() -> None:
    message = error(None, [ToolCall("computer", '{"action": "type", "text": "Dear Sir')])
    assert "not valid JSON" in message


def test_unknown_native_tool() -> None:
    message = error(None, [ToolCall("web_search", '{"query": "weather"}')])
    assert message.startswith("Unknown tool 'web_search'")
    assert "`computer`" in message


# --------------------------------------------------------------------------- vendor vocabularies

ANTHROPIC: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"action": "left_click", "coordinate": [10, 20]}, {"action": "click", "x": 10, "y": 20}),
    (
        {"action": "right_click", "coordinate": [10, 20]},
        {"action": "click", "x": 10, "y": 20, "button": "right"},
    ),
    (
        {"action": "middle_click", "coordinate": [10, 20]},
        {"action": "click", "x": 10, "y": 20, "button": "middle"},
    ),
    (
        {"action": "double_click", "coordinate": [10, 20]},
        {"action": "click", "x": 10, "y": 20, "clicks": 2},
    ),
    (
        {"action": "triple_click", "coordinate": [10, 20]},
        {"action": "click", "x": 10, "y": 20, "clicks": 3},
    ),
    (
        {"action": "left_click", "coordinate": [10, 20], "text": "shift"},
        {"action": "click", "x": 10, "y": 20, "modifiers": ["shift"]},
    ),
    ({"action": "mouse_move", "coordinate": [7, 8]}, {"action": "move", "x": 7, "y": 8}),
    (
        {"action": "left_click_drag", "start_coordinate": [1, 2], "coordinate": [300, 400]},
        {"action": "drag", "path": [{"x": 1, "y": 2}, {"x": 300, "y": 400}]},
    ),
    ({"action": "type", "text": "héllo wörld"}, {"action": "type", "text": "héllo wörld"}),
    ({"action": "key", "text": "ctrl+s"}, {"action": "key", "keys": "ctrl+s"}),
    ({"action": "key", "text": "Return"}, {"action": "key", "keys": "Return"}),
    (
        {
            "action": "scroll",
            "coordinate": [640, 400],
            "scroll_direction": "down",
            "scroll_amount": 5,
        },
        {"action": "scroll", "direction": "down", "amount": 5, "x": 640, "y": 400},
    ),
    (
        {"action": "hold_key", "text": "shift", "duration": 2},
        {"action": "hold_key", "keys": "shift", "duration": 2.0},
    ),
    ({"action": "wait", "duration": 1.5}, {"action": "wait", "seconds": 1.5}),
    ({"action": "screenshot"}, {"action": "screenshot"}),
    ({"action": "cursor_position"}, {"action": "cursor_position"}),
]


@pytest.mark.parametrize(("arguments", "expected"), ANTHROPIC, ids=lambda v: str(v)[:40])
def test_anthropic_computer_actions(arguments: dict[str, Any], expected: dict[str, Any]) -> None:
    call = ToolCall("computer", json.dumps(arguments))
    assert fields(None, [call]) == expected


def test_anthropic_tool_use_block_in_text() -> None:
    text = json.dumps(
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "computer",
            "input": {"action": "left_click", "coordinate": [5, 5]},
        }
    )
    assert fields(text) == {"action": "click", "x": 5, "y": 5}


@pytest.mark.parametrize("name", ["left_mouse_down", "left_mouse_up"])
def test_anthropic_mouse_down_up_rejected_with_advice(name: str) -> None:
    message = error(None, [ToolCall("computer", json.dumps({"action": name}))])
    assert message.startswith(f"{name} is not supported")
    assert "drag" in message


OPENAI: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"type": "click", "button": "left", "x": 100, "y": 200},
        {"action": "click", "x": 100, "y": 200},
    ),
    (
        {"type": "click", "button": "wheel", "x": 100, "y": 200},
        {"action": "click", "x": 100, "y": 200, "button": "middle"},
    ),
    (
        {"type": "click", "button": "right", "x": 1, "y": 2},
        {"action": "click", "x": 1, "y": 2, "button": "right"},
    ),
    ({"type": "click", "button": "back", "x": 1, "y": 2}, {"action": "key", "keys": "alt+Left"}),
    (
        {"type": "click", "button": "forward", "x": 1, "y": 2},
        {"action": "key", "keys": "alt+Right"},
    ),
    ({"type": "double_click", "x": 3, "y": 4}, {"action": "click", "x": 3, "y": 4, "clicks": 2}),
    (
        {"type": "drag", "path": [{"x": 1, "y": 1}, {"x": 5, "y": 5}, {"x": 9, "y": 9}]},
        {"action": "drag", "path": [{"x": 1, "y": 1}, {"x": 5, "y": 5}, {"x": 9, "y": 9}]},
    ),
    ({"type": "move", "x": 11, "y": 12}, {"action": "move", "x": 11, "y": 12}),
    (
        {"type": "scroll", "x": 500, "y": 400, "scroll_x": 0, "scroll_y": 300},
        {"action": "scroll", "direction": "down", "x": 500, "y": 400},
    ),
    (
        {"type": "scroll", "x": 500, "y": 400, "scroll_x": 0, "scroll_y": -650},
        {"action": "scroll", "direction": "up", "amount": 6, "x": 500, "y": 400},
    ),
    (
        {"type": "scroll", "x": 5, "y": 5, "scroll_x": 40, "scroll_y": 0},
        {"action": "scroll", "direction": "right", "amount": 1, "x": 5, "y": 5},
    ),
    ({"type": "keypress", "keys": ["CTRL", "S"]}, {"action": "key", "keys": "ctrl+s"}),
    ({"type": "keypress", "keys": ["ENTER"]}, {"action": "key", "keys": "Return"}),
    (
        {"type": "keypress", "keys": ["CMD", "SHIFT", "ARROWLEFT"]},
        {"action": "key", "keys": "super+shift+Left"},
    ),
    ({"type": "type", "text": "hello"}, {"action": "type", "text": "hello"}),
    ({"type": "wait"}, {"action": "wait"}),
    ({"type": "screenshot"}, {"action": "screenshot"}),
]


@pytest.mark.parametrize(("action", "expected"), OPENAI, ids=lambda v: str(v)[:40])
def test_openai_computer_use_preview_actions(
    action: dict[str, Any], expected: dict[str, Any]
) -> None:
    parsed = parse_action(action)
    dumped = parsed.model_dump(exclude={"id"}, exclude_defaults=True) | {"action": parsed.action}
    assert dumped == expected


def test_openai_computer_call_item_in_text() -> None:
    text = json.dumps(
        {
            "type": "computer_call",
            "call_id": "call_1",
            "action": {"type": "keypress", "keys": ["ALT", "F4"]},
            "pending_safety_checks": [],
        }
    )
    assert fields(text) == {"action": "key", "keys": "alt+F4"}


def test_scroll_pixels_to_notches_uses_the_documented_ratio() -> None:
    action = parse_action(
        {"type": "scroll", "x": 0, "y": 0, "scroll_x": 0, "scroll_y": 7 * PIXELS_PER_SCROLL_NOTCH}
    )
    assert action.action == "scroll" and action.amount == 7


def test_scroll_with_no_distance_is_an_error() -> None:
    with pytest.raises(ActionParseError, match="non-zero"):
        parse_action({"type": "scroll", "x": 1, "y": 1, "scroll_x": 0, "scroll_y": 0})


# --------------------------------------------------------------------------- errors for the model

ERRORS: list[tuple[str, str]] = [
    ('{"action": "teleport", "x": 1, "y": 2}', "Unknown action 'teleport'. Valid actions: click"),
    ('{"action": "click"}', "click needs x and y (integers) or a target description."),
    ('{"action": "left_click"}', "click needs x and y (integers) or a target description."),
    ('{"action": "move", "x": 5}', "move needs both x and y, or neither."),
    ('{"action": "click", "x": "left", "y": 5}', "click: x must be a number"),
    ('{"action": "scroll", "amount": 3}', "scroll needs a direction"),
    ('{"action": "scroll", "direction": "sideways"}', "scroll direction must be up, down"),
    ('{"action": "type"}', "type needs text"),
    ('{"action": "key"}', "key needs keys"),
    ('{"action": "drag", "path": [[1, 2]]}', "drag needs a path of at least two points"),
    ('{"action": "left_click_drag", "coordinate": [5, 5]}', "drag needs a path"),
    ('{"action": "fail"}', "fail needs a reason"),
    ('{"action": "shell"}', "shell needs a command"),
    ('{"action": "click", "x": 1, "y": 2, "clicks": 5}', "click: clicks: Input should be less"),
    ('{"action": "click", "button": "thumb", "x": 1, "y": 1}', "Unknown mouse button 'thumb'"),
    ('{"action": "upload_file", "path": "notes.txt"}', "upload_file is not available here"),
    ('{"x": 1, "y": 2, "name": "computer", "arguments": {"x": 1}}', 'The call has no "action"'),
    ("Sure, I will click the button now.", "No action found: reply with one tool call"),
    ("", "No action found"),
    ('I will type. {"action": "type", "text": "hello wor', "The action JSON is incomplete"),
    ('{"action": "click", "x": 100, ', "The action JSON is incomplete"),
    ('{"action": "click", "x": 100 "y": 5}', "The action JSON is malformed"),
    ("<tool_call>I want to click</tool_call>", "The <tool_call> block holds no JSON object"),
    ('{"action": 7}', '"action" must be the action name'),
]


@pytest.mark.parametrize(("content", "expected_start"), ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_errors_tell_the_model_what_to_fix(content: str, expected_start: str) -> None:
    message = error(content)
    assert message.startswith(expected_start), message
    # Fed back to the model verbatim: short, one or two sentences.
    assert len(message) < 400


def test_error_keeps_the_raw_fragment_for_logs() -> None:
    with pytest.raises(ActionParseError) as caught:
        parse_reply('x {"action": "type", "text": "unterminated', [])
    assert caught.value.raw.startswith('{"action": "type"')


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "content",
    [
        '<tool_call>{{"action": "click", "x": 5, "y": 6}}</tool_call>',
        'Clicking. {{"action": "click", "x": 5, "y": 6}}',
    ],
)
def test_doubled_braces_through_the_tools_family_read_the_inner_action(content: str) -> None:
    # Models copying a format string write {{...}}; Python reads that as a set of
    # dicts, which must not break the scan before it finds the object inside.
    parsed = get_family("tools").parse(content, [], ParseContext(1288, 728))
    assert [a.model_dump(exclude={"id"}) for a in parsed.actions] == [
        ClickAction(x=5, y=6).model_dump(exclude={"id"})
    ]


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ctrl+s", "ctrl+s"),
        ("Ctrl+S", "ctrl+s"),
        ("ctrl-s", "ctrl+s"),
        ("CTRL+ALT+DEL", "ctrl+alt+Delete"),
        ("Enter", "Return"),
        ("esc", "Escape"),
        ("Backspace", "BackSpace"),
        ("PageDown", "Page_Down"),
        ("page down", "Page_Down"),
        ("cmd+space", "super+space"),
        ("ctrl++", "ctrl+plus"),
        ("ctrl+-", "ctrl+minus"),
        ("f5", "F5"),
        ("alt+F4", "alt+F4"),
        ("XF86AudioMute", "XF86AudioMute"),
        ("ctrl+a ctrl+c", "ctrl+a ctrl+c"),
        (["CTRL", "SHIFT", "T"], "ctrl+shift+t"),
        (["ctrl+shift", "n"], "ctrl+shift+n"),
    ],
)
def test_normalize_keys(given: str | list[str], expected: str) -> None:
    assert normalize_keys(given) == expected


# --------------------------------------------------------------------------- tools and prompt


@pytest.mark.parametrize("mode", ["grounded", "direct"])
def test_tool_schema_is_flat_and_covers_the_action_space(mode: str) -> None:
    tool = computer_tool(mode)  # type: ignore[arg-type]
    assert tool["type"] == "function" and tool["function"]["name"] == "computer"
    parameters = tool["function"]["parameters"]
    text = json.dumps(parameters)
    for forbidden in ("$ref", "$defs", "oneOf", "anyOf", "allOf"):
        assert forbidden not in text
    assert parameters["required"] == ["action"]
    assert parameters["properties"]["action"]["enum"] == list(MODEL_ACTION_NAMES)
    # Every field of every offered action is described to the model.
    union = TypeAdapter(Action).json_schema()
    for name, schema in union["$defs"].items():
        action = schema["properties"].get("action", {}).get("const")
        if action not in MODEL_ACTION_NAMES:
            continue
        for field in schema["properties"]:
            if field in ("id", "action") or (field == "target" and mode == "direct"):
                continue
            assert field in parameters["properties"], (name, field)
            assert parameters["properties"][field].get("description"), field


def test_tool_schema_modes_differ_on_pointing() -> None:
    grounded = computer_tool("grounded")["function"]["parameters"]["properties"]
    direct = computer_tool("direct")["function"]["parameters"]["properties"]
    assert "target" in grounded and "target" not in direct
    assert grounded["x"]["description"] != direct["x"]["description"]


def test_file_transfer_actions_are_not_offered_to_the_model() -> None:
    for text in ACTION_SCHEMA_TEXT.values():
        assert "upload_file" not in text and "download_file" not in text
    assert "upload_file" not in MODEL_ACTION_NAMES


@pytest.mark.parametrize("mode", ["grounded", "direct"])
def test_every_example_in_the_prompt_parses(mode: str) -> None:
    text = ACTION_SCHEMA_TEXT[mode]  # type: ignore[index]
    seen = []
    for line in text.splitlines():
        example = line.removeprefix("- ").split("  (", 1)[0]
        seen.append(parse_action(json.loads(example)).action)
    assert seen == list(MODEL_ACTION_NAMES)


def test_system_prompt_carries_screen_size_and_schema() -> None:
    direct = system_prompt("direct", 1280, 720)
    assert "1280x720" in direct and "1279" in direct and "719" in direct
    assert ACTION_SCHEMA_TEXT["direct"] in direct
    grounded = system_prompt("grounded", 1920, 1080)
    assert ACTION_SCHEMA_TEXT["grounded"] in grounded
    assert "target" in grounded
    # The in-prompt fallback format must itself be parseable.
    start = grounded.index("<tool_call>")
    end = grounded.index("</tool_call>") + len("</tool_call>")
    assert parse_reply(grounded[start:end], []).action.action == "click"


def test_system_prompt_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="mode"):
        system_prompt("pixels", 10, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        system_prompt("direct", 0, 720)
