"""Write one JSON Schema file per bus message into ``schemas/json/``, and
``schemas/asyncapi.json``: an AsyncAPI 3.0 document of every subject, which
messages it carries and who sends or answers them, referring to those files.

Run ``python -m selfagent.schemas.export`` after changing a model; a test fails
while the checked-in files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from . import messages, sandboxes, subjects, trajectory
from .actions import Action

JSON_DIR = Path(__file__).parent / "json"
ASYNCAPI_FILE = Path(__file__).parent / "asyncapi.json"

EXPORTED: dict[str, Any] = {
    "TaskSubmitted": messages.TaskSubmitted,
    "ControlCommand": messages.ControlCommand,
    "SessionEvent": messages.SessionEvent,
    "Action": Action,
    "ActRequest": messages.ActRequest,
    "ActionResult": messages.ActionResult,
    "ObserveRequest": messages.ObserveRequest,
    "Observation": messages.Observation,
    "GroundRequest": messages.GroundRequest,
    "GroundResult": messages.GroundResult,
    "ErrorReply": messages.ErrorReply,
    "DeadLetter": messages.DeadLetter,
    "ActuatorHeartbeat": messages.ActuatorHeartbeat,
    "GrounderHeartbeat": messages.GrounderHeartbeat,
    "PlannerHeartbeat": messages.PlannerHeartbeat,
    "ModelStatus": messages.ModelStatus,
    "SessionState": messages.SessionState,
    "LeaseRequest": sandboxes.LeaseRequest,
    "Lease": sandboxes.Lease,
    "ReleaseRequest": sandboxes.ReleaseRequest,
    "Released": sandboxes.Released,
    "ConnectRequest": sandboxes.ConnectRequest,
    "SandboxEndpoint": sandboxes.SandboxEndpoint,
    "StatusRequest": sandboxes.StatusRequest,
    "ProvisionerStatus": sandboxes.ProvisionerStatus,
    "SandboxEvent": sandboxes.SandboxEvent,
    "HostCapacity": sandboxes.HostCapacity,
    # Not a bus message: a line of a trajectory export's steps.jsonl.
    "TrajectoryStep": trajectory.TrajectoryStep,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one exported message, as written to ``json/<name>.json``.

    Raises:
        KeyError: ``name`` is not an exported message.
    """
    schema = TypeAdapter(EXPORTED[name]).json_schema()
    schema.setdefault("title", name)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def render() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n"
        for name in EXPORTED
    }


# (channel id, address, message names, operation, description)
_CHANNELS: list[tuple[str, str, list[str], str, str]] = [
    (
        "taskSubmit",
        subjects.TASK_SUBMIT,
        ["TaskSubmitted"],
        "send",
        "Submit a task. Stored in the AGENT_TASKS work-queue stream; one planner takes it.",
    ),
    (
        "sessionControl",
        "agent.session.{session_id}.control",
        ["ControlCommand"],
        "send",
        "Pause, resume, stop, take over or release a session.",
    ),
    (
        "sessionEvents",
        "agent.session.{session_id}.event.{kind}",
        ["SessionEvent"],
        "receive",
        "Everything that happens in a session; kept in the AGENT_EVENTS stream.",
    ),
    (
        "ground",
        subjects.GROUND,
        ["GroundRequest"],
        "request",
        "Find a described element on a screenshot (grounder queue group). Reply: GroundResult.",
    ),
    (
        "sandboxAct",
        "agent.sandbox.{sandbox_id}.act",
        ["ActRequest"],
        "request",
        "Execute one action on a sandbox desktop. Reply: ActionResult.",
    ),
    (
        "sandboxObserve",
        "agent.sandbox.{sandbox_id}.observe",
        ["ObserveRequest"],
        "request",
        "Take a screenshot of a sandbox desktop. Reply: Observation.",
    ),
    (
        "actuatorHeartbeat",
        subjects.ACTUATOR_HEARTBEAT,
        ["ActuatorHeartbeat"],
        "receive",
        "Each running actuator, every second: its instance and the desktops it serves.",
    ),
    (
        "grounderHeartbeat",
        subjects.GROUNDER_HEARTBEAT,
        ["GrounderHeartbeat"],
        "receive",
        "Each grounder replica, every second and when it takes a request: "
        "the requests it is working on.",
    ),
    (
        "plannerHeartbeat",
        subjects.PLANNER_HEARTBEAT,
        ["PlannerHeartbeat"],
        "receive",
        "Each planner replica, every second and when it takes a task: the tasks it runs "
        "and their ack subjects, so that a survivor hands a dead replica's tasks over at once.",
    ),
    (
        "modelStatus",
        "agent.status.{service}",
        ["ModelStatus"],
        "receive",
        "What the planner and the grounder found at their model endpoints, every 10 s.",
    ),
    (
        "deadLetters",
        "agent.deadletter.{service}",
        ["DeadLetter"],
        "receive",
        "Messages a service rejected; kept in the AGENT_DEADLETTER stream.",
    ),
    (
        "provisionerLease",
        subjects.PROVISIONER_LEASE,
        ["LeaseRequest"],
        "request",
        "Lease a desktop for a session (waits for capacity, FIFO). Reply: Lease.",
    ),
    (
        "provisionerRelease",
        subjects.PROVISIONER_RELEASE,
        ["ReleaseRequest"],
        "request",
        "Give a session's desktop back; its home is kept unless asked. Reply: Released.",
    ),
    (
        "provisionerConnect",
        subjects.PROVISIONER_CONNECT,
        ["ConnectRequest"],
        "request",
        "Connection details of a leased sandbox, secrets included. Reply: SandboxEndpoint.",
    ),
    (
        "provisionerStatus",
        subjects.PROVISIONER_STATUS,
        ["StatusRequest"],
        "request",
        "The provisioner's sandboxes and capacity (no secrets). Reply: ProvisionerStatus.",
    ),
    (
        "provisionerEvents",
        "agent.provisioner.event.{kind}",
        ["SandboxEvent"],
        "receive",
        "Sandboxes becoming ready, leased, released or lost (no secrets).",
    ),
    (
        "provisionerCapacity",
        subjects.PROVISIONER_CAPACITY,
        ["HostCapacity"],
        "receive",
        "Each provisioner host's free places, warm desktops and sandboxes, every 2 s and on "
        "every change; a host silent for three intervals is gone.",
    ),
    *(
        (
            f"provisionerHost{op.capitalize()}",
            f"agent.provisioner.{{host}}.{op}",
            [request],
            "request",
            f"The same as agent.provisioner.{op}, answered by that host's provisioner only "
            "(what the provisioners use among themselves).",
        )
        for op, request in (
            ("lease", "LeaseRequest"),
            ("release", "ReleaseRequest"),
            ("connect", "ConnectRequest"),
            ("status", "StatusRequest"),
        )
    ),
]
_ID_PARAMETER = f"an id matching {subjects.ID_PATTERN}"
# Only ids are subject-safe tokens; an event kind is itself dotted
# ("task.started", "sandbox.ready").
_PARAMETERS = {
    "kind": "the event kind, e.g. task.started (one or more tokens)",
    "host": "a provisioner's host name as a token (selfagent.schemas.subjects.host_token)",
}
_REPLIES = {
    "ground": "GroundResult",
    "sandboxAct": "ActionResult",
    "sandboxObserve": "Observation",
    "provisionerLease": "Lease",
    "provisionerRelease": "Released",
    "provisionerConnect": "SandboxEndpoint",
    "provisionerStatus": "ProvisionerStatus",
    "provisionerHostLease": "Lease",
    "provisionerHostRelease": "Released",
    "provisionerHostConnect": "SandboxEndpoint",
    "provisionerHostStatus": "ProvisionerStatus",
}


def render_asyncapi() -> str:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {
        name: {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"json/{name}.json"},
        }
        for name in EXPORTED
    }
    for channel_id, address, names, action, description in _CHANNELS:
        parameters = {
            part[1:-1]: {"description": _PARAMETERS.get(part[1:-1], _ID_PARAMETER)}
            for part in address.split(".")
            if part.startswith("{")
        }
        channel: dict[str, Any] = {
            "address": address,
            "description": description,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }
        if parameters:
            channel["parameters"] = parameters
        channels[channel_id] = channel
        operation: dict[str, Any] = {
            "action": "receive" if action == "receive" else "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": description,
        }
        if channel_id in _REPLIES:
            reply = _REPLIES[channel_id]
            operation["reply"] = {
                "messages": [{"$ref": f"#/components/messages/{reply}"}],
            }
            messages.setdefault(reply, {"name": reply, "payload": {"$ref": f"json/{reply}.json"}})
        operations[channel_id] = operation
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "selfagent bus",
            "version": "1",
            "description": "NATS subjects and messages of selfagent. Any NATS client can submit "
            "tasks, follow session events and drive sandboxes with these.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    rendered = render()
    for stale in JSON_DIR.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (JSON_DIR / name).write_text(text)
    ASYNCAPI_FILE.write_text(render_asyncapi())
    print(f"wrote {len(rendered)} schemas to {JSON_DIR.name}/ and {ASYNCAPI_FILE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
