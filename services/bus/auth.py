"""Who may do what on the bus: one permission table, the server config made from it,
and the generated credentials.

Every NATS identity (one per service, the automation account for programs
outside, and an admin) gets an allow-list for publishing and one for
subscribing; anything not listed is refused by the server. The subjects come
from :mod:`selfagent.schemas.subjects` and the stream names from the same
module, so the table cannot drift from what the services use. The
nats-server ``authorization`` block is generated from :data:`IDENTITIES`
(:func:`server_config`); ``docs/architecture.md`` shows the same table.

Replies: a service that answers requests has ``allow_responses`` (it may
publish to the reply subject of a request it received, once) instead of a
publish right on every inbox. A requester subscribes only to its own inbox
prefix, ``_INBOX.<user>``, so one identity can never read another's replies
(the provisioner's ``connect`` replies carry desktop secrets).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from selfagent.schemas import subjects

# The JetStream API and the subjects it uses besides (nats.js.api.DEFAULT_PREFIX).
JS_API = "$JS.API"
KV_STREAM = f"KV_{subjects.SESSIONS_BUCKET}"
KV_SUBJECTS = f"$KV.{subjects.SESSIONS_BUCKET}.>"
TAKEOVER_KV_STREAM = f"KV_{subjects.TAKEOVER_BUCKET}"
ADMIN = "admin"
AUTOMATION = "automation"


def inbox_prefix(user: str) -> str:
    """The reply inbox prefix of ``user``: every client of that identity must use it."""
    return f"_INBOX.{user}"


def _declare(*streams: str) -> tuple[str, ...]:
    """Look a stream up and create it when missing (never delete or change it)."""
    out: list[str] = []
    for stream in streams:
        out += [f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.STREAM.CREATE.{stream}"]
    return tuple(out)


def _read_messages(stream: str) -> tuple[str, ...]:
    """Get one message of a stream (by sequence or last per subject), direct or not."""
    return (
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    )


def _consume(stream: str, consumer: str = "*") -> tuple[str, ...]:
    """Create, inspect, pull from and remove consumers on ``stream``.

    ``consumer``: one durable's name, or ``*`` for consumers the client names
    itself (ephemeral ones). Both spellings of "create" (with and without
    the filter subject in the subject) are in use across client versions.
    """
    # Without a name in the subject, "create" makes an ephemeral consumer.
    unnamed = (f"{JS_API}.CONSUMER.CREATE.{stream}",) if consumer == "*" else ()
    return (
        *unnamed,
        f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
    )


_ALL_STREAMS = (
    subjects.TASKS_STREAM,
    subjects.EVENTS_STREAM,
    subjects.CONTROLS_STREAM,
    subjects.DEAD_LETTER_STREAM,
)


@dataclass(frozen=True)
class Identity:
    """One NATS user and what it may do.

    ``responds``: it answers requests (``allow_responses``). ``requests``:
    it sends requests or uses JetStream, so it subscribes to its own inbox.
    """

    name: str
    why: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = ()
    responds: bool = False
    requests: bool = True

    @property
    def subscribe_allow(self) -> tuple[str, ...]:
        inbox = (f"{inbox_prefix(self.name)}.>",) if self.requests else ()
        return (*self.subscribe, *inbox)


IDENTITIES: tuple[Identity, ...] = (
    Identity(
        "planner",
        "takes tasks, follows controls and desktops, observes, grounds, acts, reports",
        publish=(
            subjects.SESSION_EVENTS_ALL,
            subjects.SANDBOX_ACT_ALL,
            subjects.SANDBOX_OBSERVE_ALL,
            subjects.GROUND,
            subjects.PROVISIONER_LEASE,
            subjects.status("planner"),
            subjects.dead_letter("planner"),
            *_declare(*_ALL_STREAMS, KV_STREAM),
            # The tasks work queue, through its one durable consumer; acks,
            # naks and terms go to the consumer's ack subjects.
            *_consume(subjects.TASKS_STREAM, subjects.PLANNER_DURABLE),
            f"$JS.ACK.{subjects.TASKS_STREAM}.{subjects.PLANNER_DURABLE}.>",
            # A session's latest control, for a stop sent while its task queued;
            # the tasks queued behind a redelivered one, for a newer task.
            *_read_messages(subjects.CONTROLS_STREAM),
            *_read_messages(subjects.TASKS_STREAM),
            # Session state: read and write the KV bucket.
            *_read_messages(KV_STREAM),
            KV_SUBJECTS,
            # Each step's screenshots; the planner owns the stream's retention.
            subjects.SCREENS_ALL,
            *_declare(subjects.SCREENS_STREAM),
            f"{JS_API}.STREAM.UPDATE.{subjects.SCREENS_STREAM}",
            # The tasks it runs, for the other replicas (who hand them over
            # at once when it falls silent).
            subjects.PLANNER_HEARTBEAT,
        ),
        subscribe=(
            subjects.SESSION_CONTROL_ALL,
            subjects.ACTUATOR_HEARTBEAT,
            subjects.GROUNDER_HEARTBEAT,
            subjects.PLANNER_HEARTBEAT,
            subjects.provisioner_event("sandbox.lost"),
            subjects.provisioner_event("sandbox.released"),
        ),
    ),
    Identity(
        "grounder",
        "answers grounding requests in its queue group",
        publish=(
            subjects.status("grounder"),
            subjects.dead_letter("grounder"),
            subjects.GROUNDER_HEARTBEAT,
        ),
        subscribe=(subjects.GROUND,),
        responds=True,
        requests=False,
    ),
    Identity(
        "actuator",
        "the only subscriber of act and observe; asks the provisioner (its host's, with "
        "ACTUATOR_HOST) for desktops; asks for approvals (events) and reads the decisions "
        "(controls)",
        publish=(
            subjects.ACTUATOR_HEARTBEAT,
            subjects.PROVISIONER_CONNECT,
            subjects.PROVISIONER_STATUS,
            # With ACTUATOR_HOST: its own host's provisioner.
            subjects.PROVISIONER_HOST_CONNECT_ALL,
            subjects.PROVISIONER_HOST_STATUS_ALL,
            # Its approval events only: it cannot speak for the planner.
            subjects.APPROVAL_EVENTS_ALL,
            subjects.dead_letter("actuator"),
        ),
        subscribe=(
            subjects.SANDBOX_ACT_ALL,
            subjects.SANDBOX_OBSERVE_ALL,
            subjects.PROVISIONER_EVENTS_ALL,
            # Which host holds which sandbox: it leaves other hosts' to their actuators.
            subjects.PROVISIONER_CAPACITY,
            subjects.SESSION_CONTROL_ALL,
        ),
        responds=True,
    ),
    Identity(
        "gateway",
        "submits tasks and controls for the web UI, relays events, reads history and state",
        publish=(
            subjects.TASK_SUBMIT,
            subjects.SESSION_CONTROL_ALL,
            subjects.PROVISIONER_LEASE,
            subjects.PROVISIONER_RELEASE,
            subjects.PROVISIONER_CONNECT,
            subjects.PROVISIONER_STATUS,
            subjects.dead_letter("gateway"),
            *_declare(*_ALL_STREAMS),
            f"{JS_API}.STREAM.INFO.{KV_STREAM}",
            *_read_messages(KV_STREAM),
            *_consume(subjects.EVENTS_STREAM),
            # Its history consumers are removed once read.
            f"{JS_API}.CONSUMER.DELETE.{subjects.EVENTS_STREAM}.*",
            # The session list: one watcher (an ordered consumer) over the bucket.
            *_consume(KV_STREAM),
            f"{JS_API}.CONSUMER.DELETE.{KV_STREAM}.*",
            f"$JS.FC.{KV_STREAM}.>",
            # Step screenshots for replay and export, one message at a time.
            *_read_messages(subjects.SCREENS_STREAM),
            # Its take-over state, kept across restarts; and the last control
            # of a held session, to see a release sent while it was away.
            *_declare(TAKEOVER_KV_STREAM),
            *_read_messages(TAKEOVER_KV_STREAM),
            f"$KV.{subjects.TAKEOVER_BUCKET}.>",
            *_read_messages(subjects.CONTROLS_STREAM),
        ),
        subscribe=(subjects.SESSION_EVENTS_ALL, subjects.SESSION_CONTROL_ALL, subjects.STATUS_ALL),
    ),
    Identity(
        "provisioner",
        "leases desktops, reports their events and its host's capacity, follows session "
        "activity; hands a shared request to the host that holds the session",
        publish=(
            subjects.PROVISIONER_EVENTS_ALL,
            subjects.PROVISIONER_CAPACITY,
            # Requests handed to another host (and, once at start, to itself
            # to know requests reach it).
            *subjects.PROVISIONER_HOST_ALL,
            subjects.dead_letter("provisioner"),
        ),
        subscribe=(
            subjects.PROVISIONER_LEASE,
            subjects.PROVISIONER_RELEASE,
            subjects.PROVISIONER_CONNECT,
            subjects.PROVISIONER_STATUS,
            *subjects.PROVISIONER_HOST_ALL,
            subjects.PROVISIONER_CAPACITY,
            subjects.SESSION_EVENTS_ALL,
        ),
        responds=True,
    ),
    Identity(
        AUTOMATION,
        "programs outside: submit tasks, control sessions, follow and replay events",
        publish=(
            subjects.TASK_SUBMIT,
            subjects.SESSION_CONTROL_ALL,
            f"{JS_API}.STREAM.INFO.{subjects.EVENTS_STREAM}",
            *_consume(subjects.EVENTS_STREAM),
            # An ordered (push) consumer answers the server's flow control.
            f"$JS.FC.{subjects.EVENTS_STREAM}.>",
        ),
        subscribe=(subjects.SESSION_EVENTS_ALL,),
    ),
    Identity(
        ADMIN,
        "operators only: everything, including deleting streams and buckets",
        publish=(">",),
        subscribe=(">",),
        requests=False,
    ),
)

SERVICE_IDENTITIES = ("planner", "grounder", "actuator", "gateway", "provisioner")
BY_NAME: Mapping[str, Identity] = {identity.name: identity for identity in IDENTITIES}


def generate_passwords(names: Iterable[str] | None = None) -> dict[str, str]:
    """A new random password (256 bits) for each identity."""
    return {name: secrets.token_urlsafe(32) for name in (names or BY_NAME)}


def server_config(passwords: Mapping[str, str]) -> str:
    """The nats-server ``authorization`` block for these passwords.

    Strings are written as JSON strings: the config parser would read an
    unquoted ``$JS...`` as a variable reference. An identity without a
    password is left out (it cannot connect).
    """
    users: list[str] = []
    for identity in IDENTITIES:
        password = passwords.get(identity.name)
        if not password:
            continue
        permissions = {
            "publish": {"allow": list(identity.publish)},
            "subscribe": {"allow": list(identity.subscribe_allow)},
        }
        if identity.responds:
            permissions["allow_responses"] = True  # type: ignore[assignment]
        users.append(
            "    {"
            f"user: {json.dumps(identity.name)}, password: {json.dumps(password)}, "
            f"permissions: {json.dumps(permissions)}"
            "}"
        )
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


# --- matching, as the server does it (for tests and the docs' table) -------


def covers(pattern: str, subject: str) -> bool:
    """Whether allow-list entry ``pattern`` includes ``subject`` (which may hold wildcards).

    ``*`` in the pattern takes one token (also a ``*`` of the subject, not
    a ``>``); ``>`` takes one or more.
    """
    want = pattern.split(".")
    have = subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have):
            return False
        if token == "*":
            if have[index] == ">":
                return False
            continue
        if token != have[index]:
            return False
    return len(have) == len(want)


def may_publish(identity: Identity, subject: str) -> bool:
    return any(covers(pattern, subject) for pattern in identity.publish)


def may_subscribe(identity: Identity, subject: str) -> bool:
    return any(covers(pattern, subject) for pattern in identity.subscribe_allow)


# --- files ------------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), also when it existed before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


@dataclass(frozen=True)
class ClientCredentials:
    """What a client needs to connect as one identity. The password never appears in repr."""

    url: str
    user: str
    password: str = field(repr=False)
    ca_file: str = ""

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.user)

    def env(self) -> dict[str, str]:
        values = {
            "NATS_URL": self.url,
            "NATS_USER": self.user,
            "NATS_PASSWORD": self.password,
            "NATS_INBOX_PREFIX": self.inbox_prefix,
        }
        if self.ca_file:
            values["NATS_TLS_CA"] = self.ca_file
        return values

    def write(self, path: Path) -> None:
        """As an env file (``KEY=value`` lines) that shells and ``selfagent.client`` read."""
        write_secret(path, "".join(f"{key}={value}\n" for key, value in self.env().items()))

    @classmethod
    def read(cls, path: Path) -> ClientCredentials:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
        return cls(
            url=values.get("NATS_URL", ""),
            user=values.get("NATS_USER", ""),
            password=values.get("NATS_PASSWORD", ""),
            ca_file=values.get("NATS_TLS_CA", ""),
        )


def markdown_table() -> str:
    """The table as docs/architecture.md shows it (a test keeps the two the same)."""
    rows = [
        "| identity | why | may publish | may subscribe | answers requests |",
        "|---|---|---|---|---|",
    ]
    for identity in IDENTITIES:
        publish = ", ".join(f"`{s}`" for s in identity.publish)
        subscribe = ", ".join(f"`{s}`" for s in identity.subscribe_allow) or "nothing"
        answers = "yes" if identity.responds else "no"
        rows.append(f"| `{identity.name}` | {identity.why} | {publish} | {subscribe} | {answers} |")
    return "\n".join(rows) + "\n"


def write_deployment(directory: Path, url: str = "nats://127.0.0.1:4222") -> list[Path]:
    """Credentials for a deployment (compose): what ``selfagent nats-credentials`` writes.

    ``<directory>/<identity>.env`` per identity (``NATS_USER``,
    ``NATS_PASSWORD``; the automation and admin files also ``NATS_URL`` and
    the inbox prefix, for programs on this machine) and ``auth.conf``, the
    server's authorization block made from them. An existing identity file is
    never overwritten: its password is kept (delete the file to rotate it);
    ``auth.conf`` is always made again from the files. Returns the files
    written. All are 0600, in a 0700 directory.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    passwords: dict[str, str] = {}
    written: list[Path] = []
    for identity in IDENTITIES:
        path = directory / f"{identity.name}.env"
        if path.exists():
            kept = ClientCredentials.read(path)
            if kept.user != identity.name or not kept.password:
                raise ValueError(f"{path} does not hold {identity.name}'s user and password")
            passwords[identity.name] = kept.password
            continue
        passwords[identity.name] = secrets.token_urlsafe(32)
        if identity.name in (AUTOMATION, ADMIN):
            ClientCredentials(url, identity.name, passwords[identity.name]).write(path)
        else:
            # A service's file: its identity only (compose sets its NATS_URL).
            write_secret(
                path, f"NATS_USER={identity.name}\nNATS_PASSWORD={passwords[identity.name]}\n"
            )
        written.append(path)
    config = directory / "auth.conf"
    write_secret(config, server_config(passwords))
    written.append(config)
    return written
