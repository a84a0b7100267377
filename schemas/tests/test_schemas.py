import pytest
from pydantic import TypeAdapter, ValidationError

from selfagent.schemas import ClickAction, TaskSubmitted, subjects
from selfagent.schemas.actions import Action
from selfagent.schemas.export import JSON_DIR, render


def test_exported_json_schemas_are_current() -> None:
    rendered = render()
    on_disk = {p.name: p.read_text() for p in JSON_DIR.glob("*.json")}
    assert on_disk == rendered, "run: python -m selfagent.schemas.export"


def test_action_union_discriminates() -> None:
    action = TypeAdapter(Action).validate_python({"action": "click", "x": 3, "y": 4})
    assert isinstance(action, ClickAction)
    assert action.point is not None and (action.point.x, action.point.y) == (3, 4)


@pytest.mark.parametrize(
    "bad",
    [
        {"action": "teleport"},
        {"action": "click"},
        {"action": "click", "x": 1},
        {"action": "type", "text": ""},
        {"action": "scroll", "direction": "sideways"},
        {"action": "click", "x": 1, "y": 2, "bogus": True},
    ],
)
def test_invalid_actions_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Action).validate_python(bad)


def test_ids_cannot_change_subject_shape() -> None:
    with pytest.raises(ValidationError):
        TaskSubmitted(prompt="x", session_id="a.b")
    with pytest.raises(ValueError):
        subjects.session_event("a*", "message")
    assert subjects.sandbox_act("box-1") == "agent.sandbox.box-1.act"
