"""NATS subject names: the only place they are spelled out.

Subject map (``<sid>`` is a session id, ``<box>`` a sandbox id; both match
:data:`ID_PATTERN`, so they never contain NATS wildcards or dots):

=================================  ==================  =====================================
subject                            pattern             payload
=================================  ==================  =====================================
``agent.task.submit``              publish (stream)    TaskSubmitted -> planner (work queue)
``agent.session.<sid>.control``    publish             ControlCommand -> planner
``agent.session.<sid>.event.<k>``  publish (stream)    SessionEvent, ``<k>`` = event kind
``agent.ground``                   request, queue      GroundRequest -> GroundResult
``agent.sandbox.<box>.act``        request             ActRequest -> ActionResult
``agent.sandbox.<box>.observe``    request             ObserveRequest -> Observation
``agent.actuator.heartbeat``       publish             ActuatorHeartbeat, every second
``agent.grounder.heartbeat``       publish             GrounderHeartbeat, every second
``agent.planner.heartbeat``        publish             PlannerHeartbeat, every second
``agent.status.<service>``         publish             ModelStatus, every 10 s (planner, grounder)
``agent.deadletter.<service>``     publish (stream)    DeadLetter
``agent.provisioner.lease``        request             LeaseRequest -> Lease
``agent.provisioner.release``      request             ReleaseRequest -> Released
``agent.provisioner.connect``      request             ConnectRequest -> SandboxEndpoint
``agent.provisioner.status``       request             StatusRequest -> ProvisionerStatus
``agent.provisioner.event.<k>``    publish             SandboxEvent, ``<k>`` = event kind
``agent.provisioner.capacity``     publish             HostCapacity, every 2 s and on change
``agent.provisioner.<host>.<op>``  request             one host's lease/release/connect/status
=================================  ==================  =====================================
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

TASK_SUBMIT = "agent.task.submit"
GROUND = "agent.ground"

GROUNDER_QUEUE = "grounder"
ACTUATOR_HEARTBEAT = "agent.actuator.heartbeat"
GROUNDER_HEARTBEAT = "agent.grounder.heartbeat"
PLANNER_HEARTBEAT = "agent.planner.heartbeat"
STATUS_ALL = "agent.status.*"
SANDBOX_ACT_ALL = "agent.sandbox.*.act"
SANDBOX_OBSERVE_ALL = "agent.sandbox.*.observe"

SESSION_EVENTS_ALL = "agent.session.*.event.>"
# The approval gate's events (approval.requested, approval.decided), all sessions.
APPROVAL_EVENTS_ALL = "agent.session.*.event.approval.>"
SESSION_CONTROL_ALL = "agent.session.*.control"
DEAD_LETTER_ALL = "agent.deadletter.>"

# JetStream streams. Tasks wait in a work queue until a planner takes them
# (nothing is lost while no planner runs); events and dead letters keep
# history for replay and automation clients.
TASKS_STREAM = "AGENT_TASKS"
PLANNER_DURABLE = "planner"
EVENTS_STREAM = "AGENT_EVENTS"
# KV bucket of SessionState records, keyed by session id.
SESSIONS_BUCKET = "agent_sessions"
# KV bucket of the gateway's take-over state (who holds which desktop, and
# from which page), so that it survives a gateway restart.
TAKEOVER_BUCKET = "agent_takeover"
DEAD_LETTER_STREAM = "AGENT_DEADLETTER"
# The latest control command per session, so a stop sent while a task still
# waits in the queue is seen by the planner that later takes it.
CONTROLS_STREAM = "AGENT_CONTROLS"
# Each step's screenshots (before: what the model saw; after: once the action
# ran), one message per image, kept for the planner's screenshot retention.
SCREENS_STREAM = "AGENT_SCREENS"
SCREENS_ALL = "agent.screens.>"

ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""What an id that becomes a subject token (session, task, sandbox) may look like.

The one spelling of the rule: the message schemas carry it as a JSON Schema
``pattern``, the gateway validates paths and bodies with it, and the web page
reads it from the served schema. Written so that Python and ECMA-262 (JSON
Schema, the browser) read it alike.
"""
_ID: Final = re.compile(ID_PATTERN)


def is_subject_id(value: str) -> bool:
    # fullmatch: with match, "$" would also accept a trailing newline.
    return _ID.fullmatch(value) is not None


def check_token(value: str) -> str:
    """Reject ids that would change the shape of a subject."""
    if not is_subject_id(value):
        raise ValueError(f"id {value!r} must match {ID_PATTERN}")
    return value


def session_control(session_id: str) -> str:
    return f"agent.session.{check_token(session_id)}.control"


def session_event(session_id: str, kind: str) -> str:
    return f"agent.session.{check_token(session_id)}.event.{kind}"


def session_events(session_id: str) -> str:
    return f"agent.session.{check_token(session_id)}.event.>"


def sandbox_act(sandbox_id: str) -> str:
    return f"agent.sandbox.{check_token(sandbox_id)}.act"


def sandbox_observe(sandbox_id: str) -> str:
    return f"agent.sandbox.{check_token(sandbox_id)}.observe"


def status(service: str) -> str:
    return f"agent.status.{check_token(service)}"


def dead_letter(service: str) -> str:
    return f"agent.deadletter.{check_token(service)}"


# The provisioner: desktops leased per session (schemas/sandboxes.py).
PROVISIONER_LEASE = "agent.provisioner.lease"
PROVISIONER_RELEASE = "agent.provisioner.release"
PROVISIONER_CONNECT = "agent.provisioner.connect"
PROVISIONER_STATUS = "agent.provisioner.status"
PROVISIONER_EVENTS_ALL = "agent.provisioner.event.>"
# Every provisioner announces its capacity here (HostCapacity).
PROVISIONER_CAPACITY = "agent.provisioner.capacity"
# The shared request subjects are served by one provisioner of the queue group,
# which answers itself or hands the request to the host that holds the session.
PROVISIONER_QUEUE = "provisioner"
PROVISIONER_OPS: Final = ("lease", "release", "connect", "status")
# One host's own subjects, for every op: agent.provisioner.<host>.<op>.
PROVISIONER_HOST_ALL: Final = tuple(f"agent.provisioner.*.{op}" for op in PROVISIONER_OPS)
PROVISIONER_HOST_CONNECT_ALL = "agent.provisioner.*.connect"
PROVISIONER_HOST_STATUS_ALL = "agent.provisioner.*.status"


def host_token(host: str) -> str:
    """A host name as a subject token.

    Host names may hold dots (a machine's FQDN), which would split the
    token; they become ``_``. A name too long for a token keeps its start
    and a hash of the whole, and ``event`` is not a host token (it would
    fall under ``agent.provisioner.event.>``).
    """
    token = re.sub(r"[^A-Za-z0-9_-]", "_", host) or "_"
    if len(token) > 64:
        token = f"{token[:47]}-{hashlib.sha256(host.encode()).hexdigest()[:16]}"
    if token == "event":
        token = "event_"
    return check_token(token)


def provisioner_host(host: str, op: str) -> str:
    """One host's own subject for ``op`` (lease, release, connect, status)."""
    if op not in PROVISIONER_OPS:
        raise ValueError(f"op must be one of {PROVISIONER_OPS}, not {op!r}")
    return f"agent.provisioner.{host_token(host)}.{op}"


def provisioner_event(kind: str) -> str:
    """``kind`` is an event's ``kind`` field, e.g. ``sandbox.ready``."""
    return f"agent.provisioner.event.{kind}"


# What is kept of a step: its screenshots, and the model call it came from.
STEP_RECORDS: Final = ("before", "after", "model")


def screenshot(session_id: str, task_id: str, step: int | str, when: str) -> str:
    """Where a step's screenshot (``before``, ``after``) or model call (``model``) is kept.

    ``task_id`` may be ``*`` to look one up.
    """
    task = task_id if task_id == "*" else check_token(task_id)
    if when not in STEP_RECORDS:
        raise ValueError(f"when must be one of {STEP_RECORDS}, not {when!r}")
    return f"agent.screens.{check_token(session_id)}.{task}.{step}.{when}"
