"""The one place where model-space coordinates become screen coordinates.

The planner shows the model a screenshot pre-resized to fit a configured box;
the model answers in that image's pixels; the actuator wants screen pixels.
"""

from __future__ import annotations

from selfagent.schemas import ClickAction, DragAction, MoveAction, Point, ScrollAction
from selfagent.schemas.actions import Action


class CoordinateMap:
    def __init__(self, image: tuple[int, int], screen: tuple[int, int]) -> None:
        self.image = image
        self.screen = screen

    def point(self, x: int, y: int) -> tuple[int, int]:
        image_w, image_h = self.image
        screen_w, screen_h = self.screen
        if (image_w, image_h) == (screen_w, screen_h):
            return x, y
        return round(x * screen_w / image_w), round(y * screen_h / image_h)

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


def off_screen_problem(action: Action, width: int, height: int) -> str | None:
    """Why the action's coordinates cannot be right, in words for the model; None if fine."""
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
        if not (0 <= x < width and 0 <= y < height):
            return (
                f"{action.action} at ({x}, {y}) is outside the screenshot "
                f"({width}x{height}; x must be 0-{width - 1}, y 0-{height - 1})"
            )
    return None
