"""Find JSON in what a model wrote: the rules the planner and the grounder share.

Models and the servers in front of them hide a JSON value in many ways: a
``<tool_call>`` block (Qwen/Hermes templates, or vLLM with the wrong tool
parser), the ``<function=...><parameter=...>`` form of newer Qwen templates, a
fenced ```json block, or a bare object in prose. This module finds them; what a
found value means (an action, a point) is for the caller to decide.

The rules:

* brackets are matched with a stack, so ``{`` and ``[`` nest in any order and a
  mismatch is noticed; brackets inside strings (double- or single-quoted, with
  backslash escapes) do not count;
* values are decoded as strict JSON first, then with the slips models make:
  trailing commas and Python literals (``'single quotes'``, ``True``, ``None``);
* a value that is cut off only before its closing brackets (a reply that hit
  its token limit) is completed when what is there is strict JSON;
* after a decoded value the scan continues behind it, so the inside of an
  object is not reported again as objects of its own.

Pure: no I/O and no project imports.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from selfagent.errors import JSONProblem

__all__ = [
    "Block",
    "Brackets",
    "BrokenJSON",
    "FunctionCall",
    "JSONProblem",
    "JSONValue",
    "complete_truncated",
    "fenced_blocks",
    "function_calls",
    "json_values",
    "loads_lenient",
    "match_brackets",
    "scan_json",
    "tool_call_blocks",
]

_TOOL_CALL_RE: Final = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FUNCTION_RE: Final = re.compile(
    r"<function=([\w.\-]+)>(.*?)(?:</function>|</tool_call>|$)", re.DOTALL
)
_PARAMETER_RE: Final = re.compile(r"<parameter=([\w\-]+)>(.*?)(?:</parameter>|$)", re.DOTALL)
_FENCE_RE: Final = re.compile(
    r"```[ \t]*(?:json5?|JSON|javascript|js)?[ \t]*\n?(.*?)```", re.DOTALL
)
_TRAILING_COMMA_RE: Final = re.compile(r",(\s*[}\]])")
_JSON_WORDS: Final = {"true": "True", "false": "False", "null": "None"}
_CLOSER: Final = {"{": "}", "[": "]"}


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True, slots=True)
class Block:
    """A delimited part of the text: ``text[start:end]`` is the whole block, ``body`` its inside."""

    start: int
    end: int
    body: str


def tool_call_blocks(text: str) -> Iterator[Block]:
    """Each ``<tool_call>...</tool_call>``; one whose closing tag was cut off runs to the end."""
    for match in _TOOL_CALL_RE.finditer(text):
        yield Block(match.start(), match.end(), match.group(1))


def fenced_blocks(text: str) -> Iterator[Block]:
    """Each fenced code block (untagged or tagged json/json5/js), language tag removed."""
    for match in _FENCE_RE.finditer(text):
        yield Block(match.start(), match.end(), match.group(1))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A ``<function=name>`` call at ``text[start:end]``.

    ``parameters`` holds its ``<parameter=key>value</parameter>`` tags, a value
    decoded as JSON when it is JSON and kept as text otherwise (these templates
    write strings unquoted); None when there are no such tags and ``body`` may
    hold the arguments as one JSON object instead.
    """

    start: int
    end: int
    name: str
    body: str
    parameters: dict[str, Any] | None

    def payload(self) -> dict[str, Any]:
        """The call as ``{"name": ..., "arguments": {...}}``."""
        arguments = self.parameters
        if arguments is None:
            first = next((v.value for v in scan_json(self.body) if isinstance(v, JSONValue)), None)
            arguments = first if isinstance(first, dict) else {}
        return {"name": self.name, "arguments": arguments}


def function_calls(text: str) -> Iterator[FunctionCall]:
    """Each ``<function=name><parameter=key>value</parameter>...</function>`` call."""
    for match in _FUNCTION_RE.finditer(text):
        body = match.group(2)
        found = list(_PARAMETER_RE.finditer(body))
        parameters: dict[str, Any] | None = None
        if found:
            parameters = {}
            for parameter in found:
                raw = parameter.group(2).strip()
                try:
                    parameters[parameter.group(1)] = json.loads(raw)
                except ValueError:
                    parameters[parameter.group(1)] = raw
        yield FunctionCall(match.start(), match.end(), match.group(1), body, parameters)


# --------------------------------------------------------------------------- brackets


class Brackets(NamedTuple):
    """Where the bracketed value opening at some index ends.

    ``end`` is the index after its closing bracket, or None when it does not
    close: ``state`` says why (the text ran out, or inside a string, or a
    bracket closed the wrong opener). When the text ran out outside a string,
    ``closers`` holds the brackets that would close it.
    """

    end: int | None
    state: Literal["closed", "open", "string", "mismatch"]
    closers: str = ""


def match_brackets(text: str, start: int) -> Brackets:
    """Match the ``{`` or ``[`` at ``start``, skipping brackets inside quoted strings."""
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "\"'":
            quote = char
        elif char in _CLOSER:
            stack.append(_CLOSER[char])
        elif char in "}]":
            if not stack or stack.pop() != char:
                return Brackets(None, "mismatch")
            if not stack:
                return Brackets(index + 1, "closed")
    if quote is not None:
        return Brackets(None, "string")
    return Brackets(None, "open", "".join(reversed(stack)))


# --------------------------------------------------------------------------- decoding


def loads_lenient(text: str) -> Any:
    """Strict JSON first, then trailing commas removed, then Python literals.

    Raises:
        JSONProblem: with the strict decoder's message and position.
    """
    try:
        return json.loads(text)
    except ValueError as error:
        first = error
    try:
        return json.loads(_TRAILING_COMMA_RE.sub(r"\1", text))
    except ValueError:
        pass
    try:
        # literal_eval evaluates literals only, never code: single-quoted dicts
        # and True/None are what models copy from Python examples.
        return ast.literal_eval(_pythonize(text))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        # TypeError: a literal Python cannot build, e.g. {{"a": 1}} (a set of dicts).
        pass
    detail = first.msg if isinstance(first, json.JSONDecodeError) else str(first)
    position = first.pos if isinstance(first, json.JSONDecodeError) else None
    where = f" at character {position}" if position is not None else ""
    raise JSONProblem(f"{detail}{where}")


def complete_truncated(text: str, brackets: Brackets | None = None) -> Any | None:
    """The value ``text`` holds if only its closing brackets are missing, else None.

    Strict JSON only: leniency here would turn ``"x": 1, `` into a
    complete-looking value that silently lost its tail.
    """
    if brackets is None:
        if not text.startswith(tuple(_CLOSER)):
            return None
        brackets = match_brackets(text, 0)
    if brackets.state != "open" or not brackets.closers:
        return None
    try:
        return json.loads(text + brackets.closers)
    except ValueError:
        return None


def _pythonize(text: str) -> str:
    """JSON's true/false/null as Python's, outside strings."""
    out: list[str] = []
    quote: str | None = None
    escaped = False
    index = 0
    while index < len(text):
        char = text[index]
        if quote is not None:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            index += 1
            continue
        if char in "\"'":
            quote = char
        elif char.isalpha():
            word_end = index
            while word_end < len(text) and (text[word_end].isalnum() or text[word_end] == "_"):
                word_end += 1
            word = text[index:word_end]
            out.append(_JSON_WORDS.get(word, word))
            index = word_end
            continue
        out.append(char)
        index += 1
    return "".join(out)


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True, slots=True)
class JSONValue:
    """A decoded value at ``text[start:end]``; ``repaired`` if its closing brackets were added."""

    start: int
    end: int
    value: Any
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class BrokenJSON:
    """A bracketed fragment that does not decode: ``text[start:end]`` is ``fragment``.

    ``problem`` is ``malformed`` (closed but not JSON; ``detail`` says where),
    ``mismatch`` (a bracket closes the wrong opener) or ``truncated`` (the text
    ends first).
    """

    start: int
    end: int
    fragment: str
    problem: Literal["malformed", "mismatch", "truncated"]
    detail: str = ""


def scan_json(text: str, openers: str = "{") -> Iterator[JSONValue | BrokenJSON]:
    """Every bracketed value opening with one of ``openers``, left to right.

    After a closed value that decodes, the scan resumes behind it; after
    anything else, at the next opener (which may be inside the broken one).
    """
    position = 0
    while True:
        indexes = [i for i in (text.find(o, position) for o in openers) if i >= 0]
        if not indexes:
            return
        start = min(indexes)
        position = start + 1
        brackets = match_brackets(text, start)
        if brackets.end is None:
            fragment = text[start:]
            repaired = complete_truncated(fragment, brackets)
            if repaired is not None:
                yield JSONValue(start, len(text), repaired, repaired=True)
            elif brackets.state == "mismatch":
                yield BrokenJSON(start, len(text), fragment, "mismatch")
            else:
                yield BrokenJSON(start, len(text), fragment, "truncated")
            continue
        fragment = text[start : brackets.end]
        try:
            value = loads_lenient(fragment)
        except JSONProblem as problem:
            yield BrokenJSON(start, brackets.end, fragment, "malformed", str(problem))
            continue
        yield JSONValue(start, brackets.end, value)
        position = brackets.end


def json_values(text: str, openers: str = "{[") -> Iterator[Any]:
    """Decoded values in the order servers hide them: tool calls, fences, then the whole text.

    For readers that want any value that fits (a point, a box) rather than
    one specific object with errors explained.
    """
    for block in tool_call_blocks(text):
        yield from _values(block.body, openers)
    for call in function_calls(text):
        yield call.payload()
    for block in fenced_blocks(text):
        yield from _values(block.body, openers)
    yield from _values(text, openers)


def _values(text: str, openers: str) -> Iterator[Any]:
    for found in scan_json(text, openers):
        if isinstance(found, JSONValue):
            yield found.value
