"""The permission table, walked on a real nats-server running the generated config.

For no credentials, the automation account and every identity, every subject
the table names (and some it does not) is published and subscribed to; what
gets through must be exactly what the table allows. The issue's own rules
are then checked again by name, so a table that drifted from them fails too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType

from selfagent.bus.auth import (
    ADMIN,
    AUTOMATION,
    BY_NAME,
    IDENTITIES,
    KV_STREAM,
    covers,
    generate_passwords,
    inbox_prefix,
    markdown_table,
    may_publish,
    may_subscribe,
    server_config,
)
from selfagent.bus.natsd import EmbeddedNats
from selfagent.bus.streams import STREAM_CONFIGS
from selfagent.schemas import subjects

PASSWORDS = generate_passwords()
STREAMS = [config.name for config in STREAM_CONFIGS if config.name]

# Subjects no identity but the admin may touch, beside those the table names.
EXTRA = [
    *(f"$JS.API.STREAM.DELETE.{name}" for name in [*STREAMS, KV_STREAM]),
    *(f"$JS.API.STREAM.PURGE.{name}" for name in [*STREAMS, KV_STREAM]),
    f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}",
    f"$JS.API.CONSUMER.DELETE.{subjects.TASKS_STREAM}.{subjects.PLANNER_DURABLE}",
    f"$JS.API.CONSUMER.CREATE.{subjects.TASKS_STREAM}",
    "$JS.API.STREAM.NAMES",
    "$JS.API.INFO",
    "_INBOX.abcdef",
    "_INBOX.someone.abcdef",
    "agent.something.else",
    "agent.deadletter.someone",
    "agent.provisioner.event.sandbox.ready",
    "agent.provisioner.event.>",
]


def concrete(pattern: str) -> str:
    return ".".join({"*": "s1", ">": "x"}.get(token, token) for token in pattern.split("."))


def walk_subjects() -> tuple[list[str], list[str]]:
    """(subjects to publish to: no wildcards, subjects to subscribe to: also the patterns)."""
    patterns = {p for i in IDENTITIES for p in (*i.publish, *i.subscribe_allow)} - {">"}
    patterns |= set(EXTRA)
    publish = sorted({concrete(p) for p in patterns})
    return publish, sorted(set(publish) | {p for p in patterns if "*" in p or ">" in p})


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path, extra_config=server_config(PASSWORDS)).start()
    yield server
    server.cleanup()


class Conn:
    def __init__(self, client: Client, errors: list[str]) -> None:
        self.client = client
        self.errors = errors


async def connect(server: EmbeddedNats, user: str | None) -> Conn:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    options: dict[str, object] = {}
    if user is not None:
        options = {"user": user, "password": PASSWORDS[user], "inbox_prefix": inbox_prefix(user)}
    client = await nats.connect(
        server.url, error_cb=on_error, allow_reconnect=False, name=f"walk-{user}", **options
    )
    return Conn(client, errors)


@pytest.fixture
async def admin(locked: EmbeddedNats) -> AsyncIterator[Conn]:
    conn = await connect(locked, ADMIN)
    js = conn.client.jetstream()
    # In memory: these only need to exist for the delete test.
    for config in STREAM_CONFIGS:
        await js.add_stream(replace(config, storage=StorageType.MEMORY))
    await js.create_key_value(
        KeyValueConfig(bucket=subjects.SESSIONS_BUCKET, storage=StorageType.MEMORY)
    )
    yield conn
    await conn.client.close()


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    # Polls state that the client's callbacks change; no event to wait on.
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def denied(errors: list[str], kind: str) -> set[str]:
    """Subjects the server reported refusing (``kind``: publish or subscription)."""
    prefix = f"permissions violation for {kind} to "
    found = set()
    for error in errors:
        reason = error.removeprefix("nats: ").strip("'")
        if reason.startswith(prefix):
            found.add(reason.removeprefix(prefix).strip('"'))
    return found


async def publish_walk(server: EmbeddedNats, admin: Conn, user: str) -> set[str]:
    """Publish on every subject as ``user``; return those the admin saw arrive."""
    publish, _ = walk_subjects()
    arrived: set[str] = set()
    marker = f"walk-{user}"

    async def seen(msg: Msg) -> None:
        if msg.data.decode(errors="replace") == marker:
            arrived.add(msg.subject)

    watch = await admin.client.subscribe(">", cb=seen)
    await admin.client.flush()
    conn = await connect(server, user)
    try:
        for subject in publish:
            await conn.client.publish(subject, marker.encode())
        await conn.client.flush()
        expected = {s for s in publish if may_publish(BY_NAME[user], s)}
        await until(lambda: arrived >= expected)
        await asyncio.sleep(0.2)  # anything more that would get through
        await until(lambda: len(denied(conn.errors, "publish")) >= len(publish) - len(expected))
        # Every refusal is reported to the client, by subject (the server lower-cases none).
        assert denied(conn.errors, "publish") == {s.lower() for s in publish} - {
            s.lower() for s in expected
        }
    finally:
        await conn.client.close()
        await watch.unsubscribe()
    return arrived


async def subscribe_walk(server: EmbeddedNats, admin: Conn, user: str) -> set[str]:
    """Subscribe to every subject as ``user``; return those whose subscription got a message."""
    _, subscribe = walk_subjects()
    received: set[str] = set()
    conn = await connect(server, user)
    try:
        for subject in subscribe:

            async def got(msg: Msg, subject: str = subject) -> None:
                received.add(subject)

            await conn.client.subscribe(subject, cb=got)
        await conn.client.flush()
        expected = {s for s in subscribe if may_subscribe(BY_NAME[user], s)}
        # Sent again until they arrive: now and then the server takes a burst
        # of subscriptions (most of them refused) on a moment after the
        # flush's answer, and what was published in between reached nobody.
        deadline = time.monotonic() + 15
        while True:
            for subject in subscribe:
                await admin.client.publish(concrete(subject), b"walk")
            await admin.client.flush()
            await until(lambda: received >= expected, timeout=0.5)
            if received >= expected or time.monotonic() > deadline:
                break
        await asyncio.sleep(0.2)
        assert {s.lower() for s in subscribe} - {s.lower() for s in expected} == denied(
            conn.errors, "subscription"
        )
    finally:
        await conn.client.close()
    return received


async def test_no_credentials_and_wrong_password_are_refused(locked: EmbeddedNats) -> None:
    with pytest.raises(nats.errors.Error) as raised:
        await nats.connect(locked.url, allow_reconnect=False, max_reconnect_attempts=0)
    assert "authorization violation" in str(raised.value).lower()
    with pytest.raises(nats.errors.Error) as raised:
        await nats.connect(
            locked.url, user="planner", password="not-its-password", allow_reconnect=False
        )
    assert "authorization violation" in str(raised.value).lower()


@pytest.mark.parametrize("user", [i.name for i in IDENTITIES if i.name != ADMIN])
async def test_each_identity_gets_exactly_its_table_row(
    locked: EmbeddedNats, admin: Conn, user: str
) -> None:
    identity = BY_NAME[user]
    publish, subscribe = walk_subjects()
    assert await publish_walk(locked, admin, user) == {
        s for s in publish if may_publish(identity, s)
    }
    assert await subscribe_walk(locked, admin, user) == {
        s for s in subscribe if may_subscribe(identity, s)
    }


async def test_admin_may_do_everything(locked: EmbeddedNats, admin: Conn) -> None:
    publish, subscribe = walk_subjects()
    assert await publish_walk(locked, admin, ADMIN) == set(publish)
    assert await subscribe_walk(locked, admin, ADMIN) == set(subscribe)


def test_the_issues_rules_hold_in_the_table() -> None:
    """Written from the issue, not from the table: the table must say the same."""
    act = subjects.sandbox_act("default")
    names = [identity.name for identity in IDENTITIES]
    assert [n for n in names if may_subscribe(BY_NAME[n], subjects.SANDBOX_ACT_ALL)] == [
        "actuator",
        ADMIN,
    ]
    assert [n for n in names if may_publish(BY_NAME[n], act)] == ["planner", ADMIN]
    control = subjects.session_control("s1")
    assert [n for n in names if may_publish(BY_NAME[n], control)] == [
        "gateway",
        AUTOMATION,
        ADMIN,
    ]
    assert may_subscribe(BY_NAME["planner"], subjects.SESSION_CONTROL_ALL)
    for name in names:
        for stream in [*STREAMS, KV_STREAM]:
            deleting = f"$JS.API.STREAM.DELETE.{stream}"
            assert may_publish(BY_NAME[name], deleting) == (name == ADMIN), (name, stream)
    automation = BY_NAME[AUTOMATION]
    assert [p for p in automation.publish if not p.startswith("$JS")] == [
        subjects.TASK_SUBMIT,
        subjects.SESSION_CONTROL_ALL,
    ]
    assert all(subjects.EVENTS_STREAM in p for p in automation.publish if p.startswith("$JS"))
    assert automation.subscribe_allow == (subjects.SESSION_EVENTS_ALL, "_INBOX.automation.>")
    # Nobody but the admin may read another identity's replies.
    for name in names:
        for other in names:
            if ADMIN not in (name, other) and other != name:
                assert not may_subscribe(BY_NAME[name], f"{inbox_prefix(other)}.x")


def test_covers_reads_wildcards_as_nats_does() -> None:
    assert covers("a.*.c", "a.b.c") and covers("a.*.c", "a.*.c")
    assert not covers("a.*.c", "a.>") and not covers("a.*.c", "a.b.c.d")
    assert covers("a.>", "a.b") and covers("a.>", "a.b.c") and not covers("a.>", "a")
    assert covers(">", "x") and not covers("a.b", "a.*")


async def test_only_the_admin_deletes_streams_and_buckets(
    locked: EmbeddedNats, admin: Conn
) -> None:
    """Real JetStream API requests, not just subjects: the streams survive everyone else."""
    for name in [i.name for i in IDENTITIES if i.name != ADMIN]:
        conn = await connect(locked, name)
        try:
            # Refused: no reply comes (the refusal goes to the error callback).
            replies = await asyncio.gather(
                *(
                    conn.client.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=0.5)
                    for stream in [*STREAMS, KV_STREAM]
                ),
                return_exceptions=True,
            )
            assert all(isinstance(reply, nats.errors.TimeoutError) for reply in replies), replies
            refused = conn.errors
            await until(lambda: len(denied(refused, "publish")) > len(STREAMS))  # noqa: B023
            assert len(denied(refused, "publish")) == len(STREAMS) + 1
        finally:
            await conn.client.close()
    js = admin.client.jetstream()
    for stream in STREAMS:
        assert (await js.stream_info(stream)).config.name == stream
    assert (await js.stream_info(KV_STREAM)).config.name == KV_STREAM
    reply = await admin.client.request(f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}", b"")
    assert json.loads(reply.data)["success"] is True
    assert await js.delete_key_value(subjects.SESSIONS_BUCKET)


def test_config_quotes_every_subject() -> None:
    """``$JS...`` unquoted would be read as a variable by the config parser."""
    config = server_config({"planner": "pw"})
    assert '"$JS.API.STREAM.INFO.AGENT_TASKS"' in config
    assert "automation" not in config, "an identity without a password is left out"


def test_the_architecture_doc_shows_this_table() -> None:
    docs = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"
    assert markdown_table() in docs.read_text(), "regenerate the table with markdown_table()"
