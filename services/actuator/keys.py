"""xdotool-style key names -> X keysyms, for RFB KeyEvents.

Names follow X's keysym names (what xdotool accepts) plus the aliases models
commonly produce ("ctrl", "enter", "win", "pagedown"...). Lookup is
case-insensitive; a single character maps to its own keysym.
"""

from __future__ import annotations

from selfagent.errors import UnknownKey

_NAMED: dict[str, int] = {
    "BackSpace": 0xFF08,
    "Tab": 0xFF09,
    "ISO_Left_Tab": 0xFE20,
    "Linefeed": 0xFF0A,
    "Clear": 0xFF0B,
    "Return": 0xFF0D,
    "Pause": 0xFF13,
    "Scroll_Lock": 0xFF14,
    "Sys_Req": 0xFF15,
    "Escape": 0xFF1B,
    "Delete": 0xFFFF,
    "Home": 0xFF50,
    "Left": 0xFF51,
    "Up": 0xFF52,
    "Right": 0xFF53,
    "Down": 0xFF54,
    "Prior": 0xFF55,
    "Next": 0xFF56,
    "End": 0xFF57,
    "Begin": 0xFF58,
    "Select": 0xFF60,
    "Print": 0xFF61,
    "Execute": 0xFF62,
    "Insert": 0xFF63,
    "Undo": 0xFF65,
    "Redo": 0xFF66,
    "Menu": 0xFF67,
    "Find": 0xFF68,
    "Cancel": 0xFF69,
    "Help": 0xFF6A,
    "Break": 0xFF6B,
    "Num_Lock": 0xFF7F,
    "KP_Enter": 0xFF8D,
    "KP_Add": 0xFFAB,
    "KP_Subtract": 0xFFAD,
    "KP_Multiply": 0xFFAA,
    "KP_Divide": 0xFFAF,
    "Shift_L": 0xFFE1,
    "Shift_R": 0xFFE2,
    "Control_L": 0xFFE3,
    "Control_R": 0xFFE4,
    "Caps_Lock": 0xFFE5,
    "Meta_L": 0xFFE7,
    "Meta_R": 0xFFE8,
    "Alt_L": 0xFFE9,
    "Alt_R": 0xFFEA,
    "Super_L": 0xFFEB,
    "Super_R": 0xFFEC,
    "Hyper_L": 0xFFED,
    "space": 0x20,
    "exclam": 0x21,
    "quotedbl": 0x22,
    "numbersign": 0x23,
    "dollar": 0x24,
    "percent": 0x25,
    "ampersand": 0x26,
    "apostrophe": 0x27,
    "parenleft": 0x28,
    "parenright": 0x29,
    "asterisk": 0x2A,
    "plus": 0x2B,
    "comma": 0x2C,
    "minus": 0x2D,
    "period": 0x2E,
    "slash": 0x2F,
    "colon": 0x3A,
    "semicolon": 0x3B,
    "less": 0x3C,
    "equal": 0x3D,
    "greater": 0x3E,
    "question": 0x3F,
    "at": 0x40,
    "bracketleft": 0x5B,
    "backslash": 0x5C,
    "bracketright": 0x5D,
    "asciicircum": 0x5E,
    "underscore": 0x5F,
    "grave": 0x60,
    "braceleft": 0x7B,
    "bar": 0x7C,
    "braceright": 0x7D,
    "asciitilde": 0x7E,
    "XF86AudioMute": 0x1008FF12,
    "XF86AudioLowerVolume": 0x1008FF11,
    "XF86AudioRaiseVolume": 0x1008FF13,
}
_NAMED.update({f"F{n}": 0xFFBE + n - 1 for n in range(1, 36)})
_NAMED.update({f"KP_{n}": 0xFFB0 + n for n in range(10)})

_ALIASES: dict[str, str] = {
    "ctrl": "Control_L",
    "control": "Control_L",
    "lctrl": "Control_L",
    "rctrl": "Control_R",
    "alt": "Alt_L",
    "option": "Alt_L",
    "altgr": "Alt_R",
    "shift": "Shift_L",
    "lshift": "Shift_L",
    "rshift": "Shift_R",
    "super": "Super_L",
    "win": "Super_L",
    "windows": "Super_L",
    "cmd": "Super_L",
    "command": "Super_L",
    "meta": "Meta_L",
    "enter": "Return",
    "ret": "Return",
    "esc": "Escape",
    "del": "Delete",
    "backspace": "BackSpace",
    "bksp": "BackSpace",
    "ins": "Insert",
    "pageup": "Prior",
    "page_up": "Prior",
    "pgup": "Prior",
    "pagedown": "Next",
    "page_down": "Next",
    "pgdn": "Next",
    "arrowleft": "Left",
    "arrowright": "Right",
    "arrowup": "Up",
    "arrowdown": "Down",
    "capslock": "Caps_Lock",
    "printscreen": "Print",
    "spacebar": "space",
}

_BY_LOWER: dict[str, int] = {name.lower(): code for name, code in _NAMED.items()}
for _alias, _target in _ALIASES.items():
    _BY_LOWER.setdefault(_alias, _NAMED[_target])

MODIFIER_KEYSYMS = frozenset(
    _NAMED[n]
    for n in (
        "Shift_L",
        "Shift_R",
        "Control_L",
        "Control_R",
        "Alt_L",
        "Alt_R",
        "Super_L",
        "Super_R",
        "Meta_L",
        "Meta_R",
    )
)



def char_keysym(char: str) -> int:
    """The keysym that types one character (Latin-1 directly, else Unicode keysyms)."""
    code = ord(char)
    if char == "\n":
        return _NAMED["Return"]
    if char == "\t":
        return _NAMED["Tab"]
    if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF:
        return code
    return 0x01000000 + code


def keysym(name: str) -> int:
    if len(name) == 1:
        return char_keysym(name)
    found = _BY_LOWER.get(name.lower())
    if found is None:
        raise UnknownKey(name)
    return found


def parse_combo(combo: str) -> list[list[int]]:
    """Parse 'ctrl+alt+t' or a space-separated sequence 'ctrl+c Return'.

    Returns a list of chords; each chord is pressed in order and released in
    reverse. Raises UnknownKey before anything would be sent.
    """
    chords: list[list[int]] = []
    for chord in combo.split():
        # "ctrl++" means ctrl and the plus key.
        parts = chord.split("+")
        names: list[str] = []
        for index, part in enumerate(parts):
            if part == "" and index == len(parts) - 1 and len(parts) > 1:
                names.append("plus")
            elif part == "":
                continue
            else:
                names.append(part)
        if not names:
            raise UnknownKey(chord)
        chords.append([keysym(n) for n in names])
    if not chords:
        raise UnknownKey(combo)
    return chords
