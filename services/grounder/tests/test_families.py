"""Parsers against answers as the models (and the servers in front of them) give them."""

from typing import get_args

import pytest

from selfagent.grounder.config import FamilyName
from selfagent.grounder.families import (
    FAMILIES,
    FAMILY_NAMES,
    GenericJSON,
    Point,
    Refusal,
    family_for_model,
    get_family,
    to_screen,
)


def point(family: str, text: str) -> Point:
    result = get_family(family).parse(text)
    assert isinstance(result, Point), result
    return result


def refusal(family: str, text: str) -> Refusal:
    result = get_family(family).parse(text)
    assert isinstance(result, Refusal), result
    return result


@pytest.mark.parametrize(
    ("family", "text", "expected"),
    [
        # OS-Atlas: box in 0-1000, with and without the special tokens.
        (
            "os-atlas",
            "<|object_ref_start|>Save<|object_ref_end|><|box_start|>(120,40),(180,60)<|box_end|>",
            (150, 50),
        ),
        ("os-atlas", "Save(120,40),(180,60)", (150, 50)),
        ("os-atlas", "Tab 2 (300, 10), (340, 30)", (320, 20)),
        # UI-TARS 1.0: start_box, Thought first, tokens stripped or not.
        (
            "ui-tars-1.0",
            "Thought: The gear icon (top right) opens settings.\n"
            "Action: click(start_box='<|box_start|>(912,36)<|box_end|>')",
            (912, 36),
        ),
        ("ui-tars-1.0", "Action: click(start_box='(912,36)')", (912, 36)),
        ("ui-tars-1.0", "click(start_box='(900,20,924,52)')", (912, 36)),
        # UI-TARS 1.5: <point>, older start_box, <bbox>.
        ("ui-tars-1.5", "Action: click(point='<point>644 364</point>')", (644, 364)),
        (
            "ui-tars-1.5",
            "Thought: I see 2 buttons.\nAction: click(point='<point>100 200</point>')\n",
            (100, 200),
        ),
        ("ui-tars-1.5", "Action: click(start_box='<|box_start|>(10,20)<|box_end|>')", (10, 20)),
        ("ui-tars-1.5", "click(start_box='(10,20)')", (10, 20)),
        ("ui-tars-1.5", "click(start_box='<bbox>10 20 30 40</bbox>')", (20, 30)),
        # Qwen2.5-VL: JSON in a fence, bare, with prose, point_2d.
        (
            "qwen2.5-vl",
            '```json\n[\n  {"bbox_2d": [100, 200, 300, 260], "label": "Save button"}\n]\n```',
            (200, 230),
        ),
        ("qwen2.5-vl", '[{"bbox_2d": [100, 200, 300, 260], "label": "Save"}]', (200, 230)),
        (
            "qwen2.5-vl",
            'Here it is: {"point_2d": [415, 92], "label": "search"} hope this helps',
            (415, 92),
        ),
        (
            "qwen2.5-vl",
            '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
            '"coordinate": [640, 360]}}\n</tool_call>',
            (640, 360),
        ),
        # Qwen3-VL: same syntax, 0-1000.
        ("qwen3-vl", '```json\n[{"bbox_2d": [481, 920, 519, 980], "label": "x"}]\n```', (500, 950)),
        ("qwen3-vl", '{"point_2d": [12, 988]}', (12, 988)),
        # UGround: (x, y) with trailing text.
        ("uground", "(503, 287)", (503, 287)),
        ("uground", "(503, 287)\nThe element is the Save button.", (503, 287)),
        # ShowUI: [x, y] in 0-1.
        ("showui", "[0.73, 0.21]", (0.73, 0.21)),
        ("showui", "[0.7, 0.2, 0.8, 0.3]", (0.75, 0.25)),
        # GTA1: (x,y) absolute.
        ("gta1", "(1030,57)", (1030, 57)),
        ("gta1", "The center is at (1030, 57).", (1030, 57)),
        # Holo: Click(x, y) or JSON.
        ("holo", "Click(352, 348)", (352, 348)),
        ("holo", '```json\n{"action": "click_absolute", "x": 352, "y": 348}\n```', (352, 348)),
        # Jedi: tool call; with the tags, without them, and with the closing tag lost.
        (
            "jedi",
            '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
            '"coordinate": [1101, 44]}}\n</tool_call>',
            (1101, 44),
        ),
        (
            "jedi",
            '{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [7, 9]}}',
            (7, 9),
        ),
        (
            "jedi",
            '<tool_call>\n{"name": "computer_use", "parameters": {"action": "left_click", '
            '"coordinate": [7, 9]}}',
            (7, 9),
        ),
        # OpenCUA: pyautogui, keyword or positional, in a code fence after a thought.
        (
            "opencua",
            "## Action:\nClick the Save button\n\n## Code:\n```python\n"
            "pyautogui.click(x=1250, y=730)\n```",
            (1250, 730),
        ),
        ("opencua", "pyautogui.click(532, 118)", (532, 118)),
        # Generic JSON.
        ("json", '{"x": 100, "y": 50}', (100, 50)),
        ("json", 'Sure!\n```json\n{"x": 100, "y": 50}\n```', (100, 50)),
        # The shared finder's leniency: Python literals, a cut-off answer, braces in strings.
        ("json", "{'x': 100, 'y': 50}", (100, 50)),
        ("json", '{"x": 100, "y": 50', (100, 50)),
        ("json", '{"note": "the } key", "x": 7, "y": 8}', (7, 8)),
    ],
)
def test_parses_point(family: str, text: str, expected: tuple[float, float]) -> None:
    found = point(family, text)
    assert (found.x, found.y) == pytest.approx(expected)


def test_box_is_kept_and_ordered() -> None:
    found = point("os-atlas", "(180,60),(120,40)")
    assert found.box == (120, 40, 180, 60)
    assert (found.x, found.y) == (150, 50)


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("ui-tars-1.5", "Action: click(point='<point>-1 -1</point>')"),
        ("uground", "(-1, -1)"),
        ("showui", "[-1, -1]"),
        ("qwen2.5-vl", '```json\n[{"bbox_2d": [-1, -1, -1, -1], "label": "none"}]\n```'),
        ("json", '{"found": false, "reason": "no such button"}'),
        ("gta1", "I cannot find that element in the screenshot."),
        ("holo", "The element is not visible."),
        ("opencua", "## Action:\nterminate\n"),
        ("os-atlas", ""),
    ],
)
def test_refusals_are_not_points(family: str, text: str) -> None:
    refusal(family, text)


def test_refusal_reason_says_why() -> None:
    assert "declined" in refusal("gta1", "Sorry, not found.").reason
    assert "no coordinates" in refusal("gta1", "hmm").reason
    assert "negative" in refusal("uground", "(-1, -1)").reason


def test_every_family_builds_messages_with_one_image() -> None:
    for family_cls in FAMILIES:
        family = family_cls()
        messages = family.messages('the "Save" button', "data:image/png;base64,AAAA", 1288, 728)
        parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
        images = [p for p in parts if p["type"] == "image_url"]
        assert len(images) == 1, family.name
        text = " ".join(
            [p["text"] for p in parts if p["type"] == "text"]
            + [m["content"] for m in messages if isinstance(m["content"], str)]
        )
        assert '"Save"' in text, family.name


def test_gta1_and_jedi_state_the_resized_size() -> None:
    for name in ("gta1", "jedi"):
        messages = get_family(name).messages("x", "data:,", 1288, 728)
        assert "1288" in str(messages) and "728" in str(messages), name


def test_absolute_families_use_the_model_grid() -> None:
    assert get_family("ui-tars-1.5").target_size(1280, 720) == (1288, 728)
    assert get_family("holo").target_size(1920, 1080) == (1316, 728)
    assert get_family("gta1", max_pixels=1003520).target_size(1920, 1080) == (1316, 728)
    # Relative families are only capped, never distorted.
    assert get_family("uground").target_size(1280, 720) == (1280, 720)


def test_auto_family_from_model_name() -> None:
    assert family_for_model("ByteDance-Seed/UI-TARS-1.5-7B").name == "ui-tars-1.5"
    assert family_for_model("bytedance-research/UI-TARS-7B-DPO").name == "ui-tars-1.0"
    assert family_for_model("OS-Copilot/OS-Atlas-Base-7B").name == "os-atlas"
    assert family_for_model("Qwen/Qwen2.5-VL-7B-Instruct").name == "qwen2.5-vl"
    assert family_for_model("Qwen/Qwen3-VL-4B-Instruct").name == "qwen3-vl"
    assert family_for_model("osunlp/UGround-V1-7B").name == "uground"
    assert family_for_model("showlab/ShowUI-2B").name == "showui"
    assert family_for_model("HelloKKMe/GTA1-7B").name == "gta1"
    assert family_for_model("Hcompany/Holo1.5-7B").name == "holo"
    assert family_for_model("xlangai/Jedi-7B-1080p").name == "jedi"
    assert family_for_model("xlangai/OpenCUA-7B").name == "opencua"
    assert family_for_model("gpt-4o") is GenericJSON


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown grounding family"):
        get_family("nonsense")


def test_every_family_is_configurable() -> None:
    assert set(FAMILY_NAMES) | {"auto", "ocr"} == set(get_args(FamilyName))


@pytest.mark.parametrize(
    ("space", "model_point", "image", "expected"),
    [
        ("abs", (644, 364), (1288, 728), (640, 360)),
        ("abs", (1287, 727), (1288, 728), (1279, 719)),
        ("rel1000", (500, 500), (1280, 720), (640, 360)),
        ("rel1", (0.25, 0.75), (1280, 720), (320, 540)),
        # Out of range answers are clamped to the screen, never off it.
        ("rel1000", (1500, 1200), (1280, 720), (1279, 719)),
    ],
)
def test_to_screen(
    space: str,
    model_point: tuple[float, float],
    image: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    result = to_screen(Point(*model_point), space, image, (1280, 720))  # type: ignore[arg-type]
    assert (result.x, result.y) == expected


def test_to_screen_maps_the_box_too() -> None:
    result = to_screen(Point(50, 50, (0, 0, 100, 100)), "abs", (644, 364), (1280, 720))
    assert result.box == (0, 0, round(100 * 1280 / 644), round(100 * 720 / 364))
