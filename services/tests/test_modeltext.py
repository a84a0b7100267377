"""Finding JSON in model text: the rules the planner and the grounder share."""

from __future__ import annotations

from typing import Any

import pytest

from selfagent.modeltext import (
    BrokenJSON,
    JSONProblem,
    JSONValue,
    complete_truncated,
    fenced_blocks,
    function_calls,
    json_values,
    loads_lenient,
    match_brackets,
    scan_json,
    tool_call_blocks,
)


def values(text: str, openers: str = "{") -> list[Any]:
    return [f.value for f in scan_json(text, openers) if isinstance(f, JSONValue)]


# --------------------------------------------------------------------------- brackets


@pytest.mark.parametrize(
    ("text", "end"),
    [
        ('{"a": 1}', 8),
        ('{"a": "}"} tail', 10),
        ('{"a": "\\"}"}', 12),
        ("{'a': '}'}", 10),
        ('{"a": [1, {"b": 2}]}', 20),
        ("[1, [2], {}] x", 12),
    ],
)
def test_brackets_close_where_the_value_ends(text: str, end: int) -> None:
    assert match_brackets(text, 0) == (end, "closed", "")


def test_brackets_report_why_they_do_not_close() -> None:
    assert match_brackets('{"a": [1, 2', 0) == (None, "open", "]}")
    assert match_brackets('{"a": "cut', 0) == (None, "string", "")
    assert match_brackets('{"a": [1}', 0) == (None, "mismatch", "")


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('{"a": [1, 2,],}', {"a": [1, 2]}),
        ("{'a': True, 'b': None}", {"a": True, "b": None}),
        ("{'a': true, 'b': null, 'c': 'true'}", {"a": True, "b": None, "c": "true"}),
    ],
)
def test_lenient_loads_forgives_common_slips(text: str, expected: Any) -> None:
    assert loads_lenient(text) == expected


def test_lenient_loads_never_runs_code() -> None:
    with pytest.raises(JSONProblem, match="at character"):
        loads_lenient('{"a": __import__("os").getcwd()}')


@pytest.mark.timeout(5)
def test_lenient_loads_of_a_literal_python_cannot_build_is_a_json_problem() -> None:
    # {{...}} reads as a set holding a dict: literal_eval raises TypeError (unhashable).
    with pytest.raises(JSONProblem):
        loads_lenient('{{"action": "click"}}')


def test_truncated_value_is_completed_only_when_strict() -> None:
    assert complete_truncated('{"a": {"b": [1, 2') == {"a": {"b": [1, 2]}}
    assert complete_truncated('{"a": 1, ') is None
    assert complete_truncated('{"a": "cut') is None
    assert complete_truncated("no value") is None


# --------------------------------------------------------------------------- scanning


def test_braces_inside_strings_do_not_split_a_value() -> None:
    text = 'I will type {"action": "type", "text": "a } b { c"} now'
    assert values(text) == [{"action": "type", "text": "a } b { c"}]


def test_scan_skips_the_inside_of_a_decoded_value() -> None:
    assert values('{"a": {"b": 1}} and {"c": 2}') == [{"a": {"b": 1}}, {"c": 2}]


def test_scan_reports_broken_fragments_and_goes_on() -> None:
    found = list(scan_json('{"a": 1 "b": 2} then {"c": 3}'))
    assert isinstance(found[0], BrokenJSON) and found[0].problem == "malformed"
    assert "character" in found[0].detail
    assert isinstance(found[-1], JSONValue) and found[-1].value == {"c": 3}


def test_scan_marks_repaired_values() -> None:
    (found,) = scan_json('prose {"action": "key", "keys": "ctrl+l"')
    assert isinstance(found, JSONValue) and found.repaired
    assert found.value == {"action": "key", "keys": "ctrl+l"}
    (cut,) = scan_json('{"text": "unterminated')
    assert isinstance(cut, BrokenJSON) and cut.problem == "truncated"


def test_scan_with_list_openers() -> None:
    assert values("see [1] and {'x': 2}", "{[") == [[1], {"x": 2}]
    assert values("see [1] and {'x': 2}") == [{"x": 2}]


# --------------------------------------------------------------------------- blocks


def test_tool_call_blocks_with_and_without_closing_tag() -> None:
    text = 'a <tool_call>{"x": 1}</tool_call> b <tool_call>{"y": 2}'
    blocks = list(tool_call_blocks(text))
    assert [b.body for b in blocks] == ['{"x": 1}', '{"y": 2}']
    assert text[blocks[0].start : blocks[0].end] == '<tool_call>{"x": 1}</tool_call>'
    assert blocks[1].end == len(text)


@pytest.mark.parametrize("tag", ["", "json", "JSON", "json5", "js"])
def test_fenced_blocks_drop_the_language_tag(tag: str) -> None:
    (block,) = fenced_blocks(f'Here:\n```{tag}\n{{"x": 1}}\n```\n')
    assert block.body.strip() == '{"x": 1}'


def test_function_calls_decode_parameters() -> None:
    text = (
        "<function=computer><parameter=action>click</parameter>"
        "<parameter=coordinate>[5, 6]</parameter></function>"
    )
    (call,) = function_calls(text)
    assert call.payload() == {
        "name": "computer",
        "arguments": {"action": "click", "coordinate": [5, 6]},
    }
    (bare,) = function_calls('<function=computer>{"action": "wait"}</function>')
    assert bare.parameters is None
    assert bare.payload() == {"name": "computer", "arguments": {"action": "wait"}}


def test_json_values_in_the_order_servers_hide_them() -> None:
    text = (
        'prose {"z": 0}\n```json\n{"fence": 1}\n```\n'
        '<tool_call>{"tag": 2}</tool_call>'
        "<function=f><parameter=p>3</parameter></function>"
    )
    found = list(json_values(text))
    assert found[:3] == [{"tag": 2}, {"name": "f", "arguments": {"p": 3}}, {"fence": 1}]
    assert {"z": 0} in found[3:]
