import pytest
from pydantic import TypeAdapter, ValidationError

from selfagent.schemas import ClickAction, TaskSubmitted, subjects
from selfagent.schemas.actions import Action
from selfagent.schemas.export import ASYNCAPI_FILE, JSON_DIR, render, render_asyncapi


def test_exported_json_schemas_are_current() -> None:
    rendered = render()
    on_disk = {p.name: p.read_text() for p in JSON_DIR.glob("*.json")}
    assert on_disk == rendered, "run: selfagent schemas"
    assert ASYNCAPI_FILE.read_text() == render_asyncapi(), "run: selfagent schemas"


def test_asyncapi_references_resolve() -> None:
    import json

    document = json.loads(ASYNCAPI_FILE.read_text())
    for message in document["components"]["messages"].values():
        target = ASYNCAPI_FILE.parent / message["payload"]["$ref"]
        assert target.exists(), target
    for operation in document["operations"].values():
        channel_id = operation["channel"]["$ref"].rsplit("/", 1)[1]
        assert channel_id in document["channels"]


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


def test_one_id_rule_in_python_and_in_the_exported_schemas() -> None:
    import json

    for name, fields in (
        ("TaskSubmitted", ("task_id", "session_id", "sandbox_id")),
        ("ControlCommand", ("session_id",)),
        ("SessionState", ("session_id", "task_id", "sandbox_id")),
        ("LeaseRequest", ("session_id",)),
        ("ReleaseRequest", ("session_id",)),
        ("ConnectRequest", ("sandbox_id", "session_id")),
    ):
        schema = json.loads((JSON_DIR / f"{name}.json").read_text())
        for field in fields:
            prop = schema["properties"][field]
            # A nullable id is anyOf [string with the pattern, null].
            patterns = [prop.get("pattern")] + [v.get("pattern") for v in prop.get("anyOf", [])]
            assert subjects.ID_PATTERN in patterns, (name, field)
    assert subjects.is_subject_id("a" * 64) and not subjects.is_subject_id("a" * 65)
    # "$" with re.match would let a newline into a subject; both checks refuse it.
    with pytest.raises(ValueError):
        subjects.check_token("abc\n")
    with pytest.raises(ValidationError):
        TaskSubmitted(prompt="x", session_id="abc\n")
    with pytest.raises(ValidationError):
        TaskSubmitted(prompt="x", sandbox_id="a b")
