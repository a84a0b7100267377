"""Reading ``Thought: ... Action: name(key='value', ...)`` replies (UI-TARS, Seed/Doubao).

The models write Python-looking calls, but not always valid Python: quotes
inside ``content`` go unescaped, servers strip the ``<|box_start|>`` special
tokens, a 1.5 checkpoint falls back to the 1.0 ``start_box='(x,y)'`` form, and
several actions may follow each other separated by blank lines. This reader is
lenient about exactly those, and strict about the rest: an unknown function
or a missing point is an error the model is told about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from selfagent.errors import ActionParseError

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_ACTION_LABEL: Final = re.compile(r"^[ \t]*Action[ \t]*:", re.MULTILINE)
_ANY_ACTION_LABEL: Final = re.compile(r"Action[ \t]*:")
_THOUGHT_LABEL: Final = re.compile(r"^\s*Thought\s*:\s*", re.IGNORECASE)
_REFLECTION: Final = re.compile(r"^\s*Reflection\s*:.*?(?=^\s*Thought\s*:|\Z)", re.S | re.M)
_THINK: Final = re.compile(r"</?think>", re.IGNORECASE)
_ESCAPES: Final = {"n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Call:
    name: str
    kwargs: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()

    def get(self, *names: str) -> str | None:
        for name in names:
            if name in self.kwargs:
                return self.kwargs[name]
        return None


@dataclass(frozen=True)
class Split:
    thought: str
    action: str


def split(text: str) -> Split:
    """The thought (without its label) and the text after ``Action:``.

    Raises:
        ActionParseError: there is no ``Action:`` line.
    """
    text = _THINK.sub("", text)
    match = _ACTION_LABEL.search(text) or _ANY_ACTION_LABEL.search(text)
    if match is None:
        raise ActionParseError("there is no 'Action:' line")
    head = _REFLECTION.sub("", text[: match.start()])
    thought = _THOUGHT_LABEL.sub("", head.strip(), count=1).strip()
    return Split(thought, text[match.end() :].strip())


def calls(text: str) -> list[Call]:
    """Every ``name(...)`` in ``text``, in order.

    Raises:
        ActionParseError: something that is not a call, or a call left open.
    """
    found: list[Call] = []
    position = 0
    while True:
        position = _skip(text, position, " \t\r\n;,")
        if position >= len(text):
            return found
        match = _NAME.match(text, position)
        if match is None:
            raise ActionParseError(
                f"cannot read an action at {text[position : position + 40]!r}: "
                "write it as name(argument='value')"
            )
        name = match.group(0)
        position = _skip(text, match.end(), " \t")
        if position >= len(text) or text[position] != "(":
            if position >= len(text) or text[position] in "\r\n":
                # A bare `wait` or `finished` on its own line.
                found.append(Call(name))
                continue
            raise ActionParseError(f"{name} must be followed by its arguments in parentheses")
        call, position = _arguments(text, name, position + 1)
        found.append(call)


def _skip(text: str, position: int, chars: str) -> int:
    while position < len(text) and text[position] in chars:
        position += 1
    return position


def _arguments(text: str, name: str, position: int) -> tuple[Call, int]:
    kwargs: dict[str, str] = {}
    args: list[str] = []
    while True:
        position = _skip(text, position, " \t\r\n")
        if position >= len(text):
            raise ActionParseError(f"{name}( is never closed with ')'")
        if text[position] == ")":
            return Call(name, kwargs, tuple(args)), position + 1
        started = position
        key: str | None = None
        match = _NAME.match(text, position)
        if match is not None:
            after = _skip(text, match.end(), " \t")
            if after < len(text) and text[after] == "=":
                key = match.group(0)
                position = _skip(text, after + 1, " \t")
        value, position = _value(text, name, position)
        if key is None:
            args.append(value)
        else:
            kwargs[key] = value
        position = _skip(text, position, " \t\r\n")
        if position < len(text) and text[position] == ",":
            position += 1
        elif position == started:
            # Nothing was read: going round again would read nothing forever.
            raise ActionParseError(f"unexpected {text[position]!r} in {name}(...)")


def _value(text: str, name: str, position: int) -> tuple[str, int]:
    if position < len(text) and text[position] in "'\"":
        return _string(text, name, position)
    depth = 0
    start = position
    while position < len(text):
        char = text[position]
        if char in "([":
            depth += 1
        elif char in ")]":
            if depth == 0:
                if char == "]":
                    # Nothing opened it, and no argument can start with it.
                    raise ActionParseError(f"unexpected ']' in {name}(...)")
                break
            depth -= 1
        elif char == "," and depth == 0:
            break
        position += 1
    return text[start:position].strip(), position


def _string(text: str, name: str, position: int) -> tuple[str, int]:
    """A quoted value; a quote closes it only where the argument list can go on.

    So ``type(content='It's done')`` keeps its apostrophe, as the model meant.
    """
    quote = text[position]
    position += 1
    out: list[str] = []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            nxt = text[position + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            position += 2
            continue
        if char == quote:
            after = _skip(text, position + 1, " \t")
            if after >= len(text) or text[after] in ",)":
                return "".join(out), position + 1
        out.append(char)
        position += 1
    raise ActionParseError(f"a quoted argument of {name}(...) is never closed")
