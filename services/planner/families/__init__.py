"""Planner model families (``PLANNER_FAMILY``), the way the grounder has grounding families.

``tools`` is our own JSON ``computer`` tool (any instruction-following model,
and the default for unknown model names); the others are computer-use models
driven in the format they were trained on:

==============  =============================  =========================  ======
name            models                         coordinates                images
==============  =============================  =========================  ======
``uitars``      UI-TARS-1.5 (and its 1.0 syntax)  pixels, smart_resize 28  5
``uitars-1.0``  UI-TARS-1.0 (7B/72B SFT, DPO)   0-1000                   5
``qwen2.5``     Qwen2.5-VL ``computer_use``     pixels, smart_resize 28  1
``qwen3``       Qwen3-VL ``computer_use``       0-1000                   5
``opencua``     OpenCUA-7B/32B pyautogui code   pixels, smart_resize 28  3
``seed``        Seed1.5-VL / Doubao ``<point>``  0-1000                   5
==============  =============================  =========================  ======

``qwen`` picks ``qwen3`` or ``qwen2.5`` from the model name; ``auto`` picks
any family from the model name.
"""

from __future__ import annotations

import re
from typing import Any, Final

from ..config import Settings
from ..tools import Mode
from .base import Family, FamilyReply, ParseContext, Turn, View
from .opencua import OpenCUA
from .qwen import Qwen3VL, Qwen25VL
from .seed import SeedPoint
from .tools import ToolsFamily, Window
from .uitars import UITars10, UITars15

__all__ = [
    "FAMILY_NAMES",
    "NATIVE_FAMILIES",
    "Family",
    "FamilyReply",
    "ParseContext",
    "ToolsFamily",
    "Turn",
    "View",
    "family_for_model",
    "for_settings",
    "get_family",
    "sampling_for",
]

# Order matters for auto: the more specific hints first.
NATIVE_FAMILIES: Final[tuple[type[Family], ...]] = (
    OpenCUA,
    UITars15,
    UITars10,
    SeedPoint,
    Qwen3VL,
    Qwen25VL,
)
FAMILY_NAMES: Final[tuple[str, ...]] = (
    "auto",
    ToolsFamily.name,
    "qwen",
    *(family.name for family in NATIVE_FAMILIES),
)


def _normalise(model: str) -> str:
    # "UI_TARS 1.5" and "ui-tars-1.5" are the same model to a person.
    return re.sub(r"[\s_]+", "-", model.strip().lower())


def family_for_model(model: str) -> type[Family]:
    """The family a model name points at; the generic ``tools`` family for unknown names."""
    name = _normalise(model)
    for family in NATIVE_FAMILIES:
        if any(hint in name for hint in family.model_hints):
            return family
    return ToolsFamily


def get_family(
    name: str,
    model: str = "",
    mode: Mode = "direct",
    keep_screenshots: int = 3,
    window: Window = "append",
    max_screenshots: int = 6,
) -> Family:
    """The configured family, ready to use.

    Raises:
        ValueError: ``name`` is not a family.
    """
    chosen: type[Family]
    if name == "auto":
        chosen = family_for_model(model)
    elif name == "qwen":
        chosen = Qwen3VL if family_for_model(model) is Qwen3VL else Qwen25VL
    else:
        by_name: dict[str, type[Family]] = {ToolsFamily.name: ToolsFamily}
        by_name.update((family.name, family) for family in NATIVE_FAMILIES)
        if name not in by_name:
            raise ValueError(f"unknown planner family {name!r}; one of {', '.join(FAMILY_NAMES)}")
        chosen = by_name[name]
    if chosen is ToolsFamily:
        return ToolsFamily(mode, keep_screenshots, window, max_screenshots)
    return chosen()


def for_settings(settings: Settings) -> Family:
    """The family the planner settings ask for."""
    return get_family(
        settings.family,
        settings.llm_model,
        settings.resolved_mode,
        settings.keep_screenshots,
        settings.screenshot_window,
        settings.max_screenshots,
    )


def sampling_for(family: Family, settings: Settings) -> dict[str, Any]:
    """The family's recommended sampling, under any PLANNER_LLM_* value set explicitly."""
    sampling = dict(family.sampling)
    explicit = settings.model_fields_set
    if "llm_temperature" in explicit:
        sampling["temperature"] = settings.llm_temperature
    if "llm_max_tokens" in explicit:
        sampling["max_tokens"] = settings.llm_max_tokens
    return sampling
