import pytest
from pydantic import TypeAdapter, ValidationError

from selfagent.schemas import (
    LeaseRequest,
    ReleaseRequest,
    SandboxEndpoint,
    SandboxLost,
    SandboxReady,
    subjects,
)
from selfagent.schemas.sandboxes import SandboxEvent


def test_endpoint_secrets_stay_out_of_repr_but_travel_in_json() -> None:
    endpoint = SandboxEndpoint(
        sandbox_id="sb-1",
        vnc_host="10.0.0.2",
        vnc_port=5901,
        vnc_password="pw-secret",
        exec_url="http://10.0.0.2:8700",
        exec_token="tok-secret",
    )
    assert "pw-secret" not in repr(endpoint) and "tok-secret" not in repr(endpoint)
    assert "pw-secret" not in str(endpoint) and "tok-secret" not in str(endpoint)
    body = endpoint.model_dump_json()
    assert "pw-secret" in body and "tok-secret" in body


@pytest.mark.parametrize("bad", ["a.b", "a*", "", "x" * 65])
def test_session_ids_cannot_change_subject_shape(bad: str) -> None:
    with pytest.raises(ValidationError):
        LeaseRequest(session_id=bad)
    with pytest.raises(ValidationError):
        ReleaseRequest(session_id=bad)


def test_events_discriminate_by_kind_and_name_their_subject() -> None:
    adapter: TypeAdapter[SandboxEvent] = TypeAdapter(SandboxEvent)
    ready = adapter.validate_json(
        SandboxReady(sandbox_id="sb-1", host="h", start_ms=812.0).model_dump_json()
    )
    assert isinstance(ready, SandboxReady) and ready.session_id is None
    lost = adapter.validate_python(
        {"kind": "sandbox.lost", "sandbox_id": "sb-1", "host": "h", "reason": "exited"}
    )
    assert isinstance(lost, SandboxLost)
    assert subjects.provisioner_event(lost.kind) == "agent.provisioner.event.sandbox.lost"
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "sandbox.ready", "sandbox_id": "sb-1", "host": "h"})
