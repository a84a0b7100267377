"""One error tree in fact: every public exception in the package derives from
SelfagentError, lives in selfagent.errors, and the documented tree matches."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import selfagent
from selfagent import errors
from selfagent.errors import SelfagentError

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(selfagent.__path__, "selfagent."):
        if ".tests" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def _public_exceptions() -> list[tuple[str, type[BaseException]]]:
    found = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional extra that is not installed
            pytest.fail(f"cannot import {name}: {exc}")
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
            ):
                found.append((f"{name}.{attr}", value))
    return found


def test_every_public_exception_is_a_selfagent_error_defined_in_one_module() -> None:
    exceptions = _public_exceptions()
    assert exceptions, "the walk found no exception classes at all"
    strays = [name for name, cls in exceptions if not issubclass(cls, SelfagentError)]
    assert not strays, f"not derived from SelfagentError: {strays}"
    elsewhere = [name for name, _ in exceptions if not name.startswith("selfagent.errors.")]
    assert not elsewhere, f"define these in selfagent.errors instead: {elsewhere}"


def test_the_errors_module_is_pure() -> None:
    source = (ROOT / "services" / "errors.py").read_text()
    imports = re.findall(r"^(?:from|import) (\S+)", source, re.M)
    assert set(imports) <= {"__future__", "typing", "selfagent.schemas"}, imports


def _documented(text: str) -> dict[str, int]:
    """Class name -> depth, from a box-drawn tree."""
    tree: dict[str, int] = {}
    margin = 0
    for line in text.splitlines():
        match = re.match(r"^([ │├└─]*)([A-Z]\w+)", line)
        if match is None:
            continue
        if match.group(2) == "SelfagentError":
            margin = len(match.group(1))
            tree["SelfagentError"] = 0
        elif "─" in match.group(1):
            tree[match.group(2)] = (len(match.group(1)) - margin) // 4
    return tree


def _actual() -> dict[str, int]:
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, SelfagentError)
    }
    # Depth in our tree: our ancestors only (JSONProblem is also a ValueError).
    return {
        name: sum(1 for base in cls.__mro__ if issubclass(base, SelfagentError)) - 1
        for name, cls in classes.items()
    }


@pytest.mark.parametrize("where", ["module docstring", "docs/architecture.md"])
def test_the_documented_tree_is_the_real_one(where: str) -> None:
    if where == "module docstring":
        text = errors.__doc__ or ""
    else:
        doc = (ROOT / "docs" / "architecture.md").read_text()
        text = doc.split("## Errors", 1)[1].split("```", 2)[1]
    assert _documented(text) == _actual()
