"""Seed1.5-VL / Doubao ``<point>`` agents: ``Action: click(point='<point>x y</point>')``.

Facts this follows (Seed1.5-VL GUI cookbook, the ``*_DOUBAO`` computer-use
prompt in the UI-TARS repository):

* the UI-TARS prompt shape and Thought/Action output, with points written as
  ``<point>x y</point>`` and the keywords ``point``, ``start_point``,
  ``end_point``; no ``call_user`` in the prompt (later Doubao prompts add it,
  and it is understood when it comes);
* coordinates in thousandths of the image (0-1000), so the screenshot needs
  no particular size;
* history-5 as UI-TARS: the 4 newest earlier screenshots plus the current
  one, every earlier reply kept as text;
* sampling: temperature 0, 400 tokens.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from .uitars import _FORMAT_NOTES, UITars15

_POINT_ACTIONS: Final = (
    "click(point='<point>x1 y1</point>')\n"
    "left_double(point='<point>x1 y1</point>')\n"
    "right_single(point='<point>x1 y1</point>')\n"
    "drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>')\n"
    + _FORMAT_NOTES
    + "scroll(point='<point>x1 y1</point>', direction='down or up or right or left') "
    "# Reveals more in the given direction.\n"
    "wait() # Waits 5 seconds, then takes a new screenshot to see what changed.\n"
    "finished(content='xxx') # The task is done; content is your answer for the user "
    "(escaped like type)."
)


class SeedPoint(UITars15):
    name = "seed"
    title = "Seed1.5-VL <point>"
    model_hints = ("seed1.5-vl", "seed-1.5-vl", "seed1-5-vl", "seed-vl", "doubao")
    space = "rel1000"
    resize = False
    images = 5
    sampling = MappingProxyType({"temperature": 0.0, "max_tokens": 400})
    action_space = _POINT_ACTIONS
    correction_text = (
        "Your last reply could not be used: {problem}. Answer with one Thought and one "
        "Action from the action space, for example:\n"
        "Thought: The Save button is at the bottom right; I click it.\n"
        "Action: click(point='<point>x1 y1</point>')"
    )

    def replay_action(self, action: str) -> str:
        return action
