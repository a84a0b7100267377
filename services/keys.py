"""Key names: one table for what models write, what actions carry and what X receives.

Every key has one canonical name, the xdotool spelling that a ``key`` action
carries (``ctrl``, ``Return``, ``Page_Down``, ``F5``...), its X keysym, and
the aliases models produce (``control``, ``cmd``, ``enter``, ``pgdn``...).
The planner writes canonical names (:func:`canonical`); the actuator turns any
name into a keysym (:func:`keysym`) and rejects what it does not know before
anything is sent.

A name is looked up case-insensitively and without spaces, underscores and
hyphens, so ``Page_Down``, ``page down`` and ``PAGEDOWN`` are one key. A
single character is a key of its own: punctuation has its X name
(``+`` is ``plus``), and any character maps to the keysym that types it.

Combos: ``+`` joins the keys of a chord (``ctrl+alt+t``) and whitespace
separates chords pressed one after the other (``ctrl+a ctrl+c``); a ``+`` at
the end of a chord is the plus key itself (``ctrl++``).

Pure: no I/O, nothing but the standard library and :mod:`selfagent.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from selfagent.errors import UnknownKey

__all__ = [
    "KEYS",
    "Key",
    "canonical",
    "char_keysym",
    "is_modifier",
    "keysym",
    "lookup",
    "split_chord",
]


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    keysym: int
    aliases: tuple[str, ...] = ()
    modifier: bool = False


def _mod(name: str, code: int, *aliases: str) -> Key:
    return Key(name, code, aliases, modifier=True)


def _key(name: str, code: int, *aliases: str) -> Key:
    return Key(name, code, aliases)


KEYS: Final[tuple[Key, ...]] = (
    # Held keys. The short lowercase names are what xdotool and the models
    # use; "meta" is the Windows/Command key, as browsers report it.
    _mod("ctrl", 0xFFE3, "control", "ctl", "strg", "lctrl", "leftctrl"),
    _mod("alt", 0xFFE9, "option", "opt", "lalt", "leftalt"),
    _mod("shift", 0xFFE1, "lshift", "leftshift"),
    _mod("super", 0xFFEB, "win", "windows", "cmd", "command", "meta", "mod4", "os", "lsuper"),
    _mod("Control_L", 0xFFE3),
    _mod("Control_R", 0xFFE4, "rctrl", "rightctrl"),
    _mod("Alt_L", 0xFFE9),
    _mod("Alt_R", 0xFFEA, "ralt", "rightalt", "altgr"),
    _mod("Shift_L", 0xFFE1),
    _mod("Shift_R", 0xFFE2, "rshift", "rightshift"),
    _mod("Super_L", 0xFFEB),
    _mod("Super_R", 0xFFEC, "rsuper", "rwin"),
    _mod("Meta_L", 0xFFE7),
    _mod("Meta_R", 0xFFE8),
    _mod("Hyper_L", 0xFFED),
    # Editing and navigation.
    _key("Return", 0xFF0D, "enter", "ret", "\n"),
    _key("Escape", 0xFF1B, "esc"),
    _key("Tab", 0xFF09, "\t"),
    _key("ISO_Left_Tab", 0xFE20),
    _key("space", 0x20, "spacebar", " "),
    _key("BackSpace", 0xFF08, "bksp"),
    _key("Delete", 0xFFFF, "del"),
    _key("Insert", 0xFF63, "ins"),
    _key("Home", 0xFF50),
    _key("End", 0xFF57),
    _key("Begin", 0xFF58),
    _key("Page_Up", 0xFF55, "pgup", "prior"),
    _key("Page_Down", 0xFF56, "pgdn", "pgdown", "next"),
    _key("Up", 0xFF52, "arrowup", "uparrow"),
    _key("Down", 0xFF54, "arrowdown", "downarrow"),
    _key("Left", 0xFF51, "arrowleft", "leftarrow"),
    _key("Right", 0xFF53, "arrowright", "rightarrow"),
    _key("Linefeed", 0xFF0A),
    _key("Clear", 0xFF0B),
    _key("Caps_Lock", 0xFFE5),
    _key("Num_Lock", 0xFF7F),
    _key("Scroll_Lock", 0xFF14),
    _key("Print", 0xFF61, "printscreen", "prtsc", "prtscn"),
    _key("Sys_Req", 0xFF15),
    _key("Pause", 0xFF13),
    _key("Break", 0xFF6B),
    _key("Menu", 0xFF67, "contextmenu", "apps"),
    _key("Select", 0xFF60),
    _key("Execute", 0xFF62),
    _key("Undo", 0xFF65),
    _key("Redo", 0xFF66),
    _key("Find", 0xFF68),
    _key("Cancel", 0xFF69),
    _key("Help", 0xFF6A),
    _key("KP_Enter", 0xFF8D),
    _key("KP_Add", 0xFFAB),
    _key("KP_Subtract", 0xFFAD),
    _key("KP_Multiply", 0xFFAA),
    _key("KP_Divide", 0xFFAF),
    *(_key(f"KP_{n}", 0xFFB0 + n) for n in range(10)),
    *(_key(f"F{n}", 0xFFBE + n - 1) for n in range(1, 36)),
    _key("XF86AudioMute", 0x1008FF12),
    _key("XF86AudioLowerVolume", 0x1008FF11),
    _key("XF86AudioRaiseVolume", 0x1008FF13),
    # Punctuation by its X name; the character itself is an alias.
    _key("exclam", 0x21, "!"),
    _key("quotedbl", 0x22, '"'),
    _key("numbersign", 0x23, "#"),
    _key("dollar", 0x24, "$"),
    _key("percent", 0x25, "%"),
    _key("ampersand", 0x26, "&"),
    _key("apostrophe", 0x27, "'", "quote"),
    _key("parenleft", 0x28, "("),
    _key("parenright", 0x29, ")"),
    _key("asterisk", 0x2A, "*"),
    _key("plus", 0x2B, "+"),
    _key("comma", 0x2C, ","),
    _key("minus", 0x2D, "-", "dash", "hyphen"),
    _key("period", 0x2E, ".", "dot"),
    _key("slash", 0x2F, "/"),
    _key("colon", 0x3A, ":"),
    _key("semicolon", 0x3B, ";"),
    _key("less", 0x3C, "<"),
    _key("equal", 0x3D, "=", "equals"),
    _key("greater", 0x3E, ">"),
    _key("question", 0x3F, "?"),
    _key("at", 0x40, "@"),
    _key("bracketleft", 0x5B, "["),
    _key("backslash", 0x5C, "\\"),
    _key("bracketright", 0x5D, "]"),
    _key("asciicircum", 0x5E, "^"),
    _key("underscore", 0x5F, "_"),
    _key("grave", 0x60, "`", "backtick"),
    _key("braceleft", 0x7B, "{"),
    _key("bar", 0x7C, "|"),
    _key("braceright", 0x7D, "}"),
    _key("asciitilde", 0x7E, "~"),
)

_SEPARATORS: Final = re.compile(r"[\s_\-]")


def _squash(name: str) -> str:
    return _SEPARATORS.sub("", name.lower())


def _index() -> tuple[dict[str, Key], dict[str, Key]]:
    by_char: dict[str, Key] = {}
    by_name: dict[str, Key] = {}
    for key in KEYS:
        for spelling in (key.name, *key.aliases):
            single = len(spelling) == 1
            table = by_char if single else by_name
            if table.setdefault(spelling if single else _squash(spelling), key) is not key:
                # Two keys answering to one spelling would make lookups order-dependent.
                raise ValueError(f"key spelling {spelling!r} is ambiguous")
    return by_char, by_name


_BY_CHAR, _BY_NAME = _index()


def lookup(name: str) -> Key | None:
    """The key a name, an alias or a punctuation character stands for; None if unknown."""
    if len(name) == 1:
        return _BY_CHAR.get(name)
    return _BY_NAME.get(_squash(name))


def canonical(token: str) -> str:
    """The canonical name of one key as a model spelled it; unknown names come back unchanged.

    A letter names a key, not a character: the ``S`` of ``CTRL+S`` is ``s``.
    """
    key = lookup(token)
    if key is not None:
        return key.name
    if len(token) == 1 and token.isascii() and token.isalpha():
        return token.lower()
    return token


def is_modifier(name: str) -> bool:
    key = lookup(name)
    return key is not None and key.modifier


def char_keysym(char: str) -> int:
    """The keysym that types one character (Latin-1 directly, else Unicode keysyms)."""
    if char in "\n\t":
        # Typed as the Return and Tab keys: there are no keysyms for the control characters.
        return _BY_CHAR[char].keysym
    code = ord(char)
    if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF:
        return code
    return 0x01000000 + code


def keysym(name: str) -> int:
    """The keysym to send for a key name.

    Raises:
        UnknownKey: the name is no key of the table and not a single character.
    """
    if len(name) == 1:
        return char_keysym(name)
    key = lookup(name)
    if key is None:
        raise UnknownKey(name)
    return key.keysym


def split_chord(chord: str) -> list[str]:
    """The key names of one chord: ``"ctrl+alt+t"`` -> ``["ctrl", "alt", "t"]``.

    A ``+`` at the end is the plus key (``"ctrl++"`` -> ``["ctrl", "plus"]``);
    other empty parts are dropped.
    """
    parts = chord.split("+")
    names = [part.strip() for part in parts if part.strip()]
    if len(parts) > 1 and not parts[-1].strip():
        names.append("plus")
    return names
