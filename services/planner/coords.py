"""The one place where model-space coordinates become screen coordinates.

The planner shows the model a screenshot (pre-resized to fit a configured box,
or to the model's own ``smart_resize`` grid); the model answers either in that
image's pixels (``pixels``) or in thousandths of it (``rel1000``, 0-1000 on
both axes whatever the aspect ratio); the actuator wants screen pixels.
"""

from __future__ import annotations

from typing import Final, Literal

from selfagent.schemas import ClickAction, DragAction, MoveAction, Point, ScrollAction
from selfagent.schemas.actions import Action

CoordSpace = Literal["pixels", "rel1000"]

REL_SPAN: Final = 1000
"""Relative models answer 0-1000 (some cookbooks say 0-999; both fit)."""


class CoordinateMap:
    """Maps points from the model's space to the screen (and back, for the pointer).

    ``image`` is the size of the image the model was sent; ``space`` says how
    the model expresses a point in it.
    """

    def __init__(
        self, image: tuple[int, int], screen: tuple[int, int], space: CoordSpace = "pixels"
    ) -> None:
        self.image = image
        self.screen = screen
        self.space = space

    @property
    def model_size(self) -> tuple[int, int]:
        """The span of the model's coordinates on each axis."""
        if self.space == "rel1000":
            return REL_SPAN, REL_SPAN
        return self.image

    def point(self, x: int, y: int) -> tuple[int, int]:
        model_w, model_h = self.model_size
        screen_w, screen_h = self.screen
        if (model_w, model_h) == (screen_w, screen_h):
            return x, y
        # Clamped: 1000 on a 0-1000 scale is the far edge, one past the last pixel.
        return (
            min(max(round(x * screen_w / model_w), 0), screen_w - 1),
            min(max(round(y * screen_h / model_h), 0), screen_h - 1),
        )

    def from_screen(self, x: int, y: int) -> tuple[int, int]:
        """A screen point in the model's space (where the pointer is, for models that ask)."""
        model_w, model_h = self.model_size
        screen_w, screen_h = self.screen
        return round(x * model_w / screen_w), round(y * model_h / screen_h)

    def to_screen(self, action: Action) -> Action:
        match action:
            case ClickAction() | MoveAction() | ScrollAction() if action.x is not None:
                assert action.y is not None
                x, y = self.point(action.x, action.y)
                return action.model_copy(update={"x": x, "y": y})
            case DragAction():
                path = [Point(x=p[0], y=p[1]) for p in (self.point(q.x, q.y) for q in action.path)]
                return action.model_copy(update={"path": path})
            case _:
                return action


def off_screen_problem(
    action: Action, width: int, height: int, space: CoordSpace = "pixels"
) -> str | None:
    """Why the action's coordinates cannot be right, in words for the model; None if fine.

    ``width`` x ``height`` is the image the model saw; in ``rel1000`` every
    coordinate must lie in 0-1000 instead.
    """
    points: list[tuple[int, int]] = []
    match action:
        case ClickAction() | MoveAction() | ScrollAction() if action.x is not None:
            assert action.y is not None
            points.append((action.x, action.y))
        case DragAction():
            points.extend((p.x, p.y) for p in action.path)
        case _:
            pass
    for x, y in points:
        if space == "rel1000":
            if not (0 <= x <= REL_SPAN and 0 <= y <= REL_SPAN):
                return (
                    f"{action.action} at ({x}, {y}) is outside the screenshot (coordinates are "
                    f"thousandths of its width and height: 0-{REL_SPAN} on both axes)"
                )
        elif not (0 <= x < width and 0 <= y < height):
            return (
                f"{action.action} at ({x}, {y}) is outside the screenshot "
                f"({width}x{height}; x must be 0-{width - 1}, y 0-{height - 1})"
            )
    return None
