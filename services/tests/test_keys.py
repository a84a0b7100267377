"""The one key table: what the planner writes is what the actuator sends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from selfagent.actuator.keys import parse_combo
from selfagent.errors import UnknownKey
from selfagent.keys import KEYS, canonical, char_keysym, is_modifier, keysym, lookup, split_chord
from selfagent.planner.parsing import normalize_keys


@pytest.mark.parametrize(
    ("spellings", "name", "code"),
    [
        (("ctrl", "control", "CTRL", "Ctl", "lctrl"), "ctrl", 0xFFE3),
        (("super", "cmd", "Command", "win", "Windows", "meta", "Meta"), "super", 0xFFEB),
        (("alt", "option", "opt"), "alt", 0xFFE9),
        (("Return", "enter", "RETURN", "ret"), "Return", 0xFF0D),
        (("Escape", "esc", "ESC"), "Escape", 0xFF1B),
        (("Page_Up", "pgup", "PageUp", "page up", "page-up", "Prior"), "Page_Up", 0xFF55),
        (("Page_Down", "pgdn", "pagedown", "Next"), "Page_Down", 0xFF56),
        (("BackSpace", "backspace", "bksp"), "BackSpace", 0xFF08),
        (("Control_R", "rctrl"), "Control_R", 0xFFE4),
        (("Alt_R", "altgr", "ralt"), "Alt_R", 0xFFEA),
        (("plus", "+"), "plus", 0x2B),
        (("minus", "-", "dash"), "minus", 0x2D),
        (("F5", "f5"), "F5", 0xFFC2),
        (("KP_Enter", "kp_enter"), "KP_Enter", 0xFF8D),
    ],
)
def test_aliases_name_one_key(spellings: tuple[str, ...], name: str, code: int) -> None:
    for spelling in spellings:
        assert canonical(spelling) == name, spelling
        assert keysym(spelling) == code, spelling


def test_every_spelling_reaches_the_keysym_of_its_key() -> None:
    for key in KEYS:
        for spelling in (key.name, *key.aliases):
            assert lookup(spelling) is key, spelling
            # The planner writes canonical names; the actuator must send the same key.
            assert keysym(canonical(spelling)) == key.keysym, spelling
            assert keysym(spelling) == key.keysym, spelling


def test_letters_and_unknown_names() -> None:
    assert canonical("S") == "s"
    assert keysym("S") == ord("S")
    assert canonical("nosuchkey") == "nosuchkey"
    with pytest.raises(UnknownKey, match="nosuchkey"):
        keysym("nosuchkey")


def test_modifiers() -> None:
    assert all(is_modifier(name) for name in ("ctrl", "Shift", "cmd", "rctrl", "Alt_R"))
    assert not any(is_modifier(name) for name in ("Return", "a", "+", "nosuchkey"))


@pytest.mark.parametrize(
    ("chord", "names"),
    [
        ("ctrl+alt+t", ["ctrl", "alt", "t"]),
        ("ctrl++", ["ctrl", "plus"]),
        ("+", ["plus"]),
        ("ctrl+-", ["ctrl", "-"]),
        ("Return", ["Return"]),
    ],
)
def test_split_chord(chord: str, names: list[str]) -> None:
    assert split_chord(chord) == names


def test_char_keysyms() -> None:
    assert char_keysym("a") == 0x61
    assert char_keysym("é") == 0xE9
    assert char_keysym("€") == 0x010020AC
    assert char_keysym("\n") == keysym("Return")
    assert char_keysym("\t") == keysym("Tab")


@pytest.mark.parametrize(
    ("written", "chords"),
    [
        ("CTRL+ALT+DEL", [[0xFFE3, 0xFFE9, 0xFFFF]]),
        ("cmd+shift+T", [[0xFFEB, 0xFFE1, ord("t")]]),
        ("page down", [[0xFF56]]),
        ("ctrl-s", [[0xFFE3, ord("s")]]),
        ("ctrl++", [[0xFFE3, ord("+")]]),
        ("Meta+L", [[0xFFEB, ord("l")]]),
        ("ctrl+a ctrl+c", [[0xFFE3, ord("a")], [0xFFE3, ord("c")]]),
    ],
)
def test_what_the_planner_normalises_the_actuator_sends(
    written: str, chords: list[list[int]]
) -> None:
    assert parse_combo(normalize_keys(written)) == chords


def test_the_actuator_refuses_an_unknown_key_in_a_combo() -> None:
    with pytest.raises(UnknownKey, match="nosuchkey"):
        parse_combo("ctrl+nosuchkey")
    with pytest.raises(UnknownKey):
        parse_combo("   ")


def test_the_table_is_pure() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, selfagent.keys, selfagent.modeltext; print(' '.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "selfagent.keys" in loaded and "selfagent.modeltext" in loaded
    heavy = {"numpy", "PIL", "nats", "faststream", "openai", "selfagent.actuator"}
    assert not heavy & {name.split(".")[0] for name in loaded} | heavy & set(loaded)
