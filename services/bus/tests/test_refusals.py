"""What the bus does when NATS refuses us or does not answer: raise, never "retry forever" or
"the stream is missing"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from selfagent.bus.broker import make_broker, start_with_retry
from selfagent.bus.jetstream import jetstream
from selfagent.bus.natsd import EmbeddedNats
from selfagent.bus.streams import STREAM_CONFIGS, ensure_streams
from selfagent.errors import BusAuthError, RequestTimeout
from selfagent.schemas import subjects

PASSWORD = "right-horse-battery"
# svc may do anything; nojs may connect and use core NATS but not the JetStream API.
USERS = (
    "authorization { users: [\n"
    f'  {{ user: svc, password: "{PASSWORD}" }}\n'
    '  { user: nojs, password: nojs-pw, permissions: { publish: { deny: ["$JS.API.>"] } } }\n'
    "] }\n"
)


@pytest.fixture(scope="module")
def locked_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A real nats-server that wants a user and password."""
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats"), extra_config=USERS)
    server.start()
    yield server
    server.cleanup()


def _url(server: EmbeddedNats, user: str, password: str) -> str:
    return f"nats://{user}:{password}@127.0.0.1:{server.port}"


@pytest.mark.parametrize("declare_streams", [False, True], ids=["start", "connect+declare"])
async def test_wrong_password_raises_at_once(
    locked_nats: EmbeddedNats, declare_streams: bool
) -> None:
    broker = make_broker(_url(locked_nats, "svc", "wrong-password"), "refused")
    started = time.monotonic()
    with pytest.raises(BusAuthError) as raised:
        await asyncio.wait_for(
            start_with_retry(
                broker,
                attempt_every=2.0,
                before_start=ensure_streams if declare_streams else None,
            ),
            timeout=10,
        )
    elapsed = time.monotonic() - started
    # No retry happened: one attempt interval would already be 2 s.
    assert elapsed < 1.0, elapsed
    message = str(raised.value)
    assert f"nats://127.0.0.1:{locked_nats.port}" in message
    assert "wrong-password" not in message and "svc:" not in message
    await broker.stop()


async def test_right_password_connects_and_declares(locked_nats: EmbeddedNats) -> None:
    broker = make_broker(_url(locked_nats, "svc", PASSWORD), "allowed")
    await asyncio.wait_for(start_with_retry(broker, before_start=ensure_streams), timeout=20)
    try:
        js = jetstream(broker)
        for config in STREAM_CONFIGS:
            assert config.name is not None
            info = await js.stream_info(config.name)
            assert info.config.subjects == config.subjects
        # Declaring again finds every stream and changes nothing.
        await ensure_streams(broker)
    finally:
        await broker.stop()


async def test_stream_lookup_without_permission_raises(locked_nats: EmbeddedNats) -> None:
    broker = make_broker(_url(locked_nats, "nojs", "nojs-pw"), "no-jetstream")
    await broker.connect()
    try:
        started = time.monotonic()
        with pytest.raises(BusAuthError) as raised:
            await ensure_streams(broker)
        # The refusal ends the look-up; it does not wait for the API timeout.
        assert time.monotonic() - started < 2.0
        # Raised by the look-up itself, not by trying to create a "missing" stream.
        assert f"$JS.API.STREAM.INFO.{subjects.TASKS_STREAM}" in str(raised.value)
    finally:
        await broker.stop()


async def test_stream_lookup_that_times_out_is_not_a_missing_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A JetStream API that does not answer raises RequestTimeout; nothing is created."""
    import selfagent.bus.streams as streams

    monkeypatch.setattr(streams, "API_TIMEOUT", 0.5)
    server = EmbeddedNats(jetstream=False).start()
    # A JetStream that hangs: its API requests are received but never answered.
    silent = await nats.connect(server.url)
    calls: list[str] = []

    async def swallow(msg: Msg) -> None:
        calls.append(msg.subject)

    await silent.subscribe("$JS.API.>", cb=swallow)
    await silent.flush()
    broker = make_broker(server.url, "timeout")
    await broker.connect()
    try:
        with pytest.raises(RequestTimeout):
            await ensure_streams(broker)
        assert calls == [f"$JS.API.STREAM.INFO.{subjects.TASKS_STREAM}"]
    finally:
        await broker.stop()
        await silent.close()
        server.cleanup()


@pytest.fixture
async def lone_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path).start()
    yield server
    server.stop()


async def test_stop_after_nats_went_away_is_quiet(
    lone_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stopping first must not turn a service's stop into a traceback."""
    caplog.set_level("DEBUG")
    broker = make_broker(lone_nats.url, "orphan")

    @broker.subscriber("orphan.core")
    async def core(body: bytes) -> None:
        return None

    await start_with_retry(broker, before_start=ensure_streams)
    lone_nats.stop()
    # The client notices and starts reconnecting: that is the state stop() meets.
    deadline = time.monotonic() + 10
    while not broker.connection.is_reconnecting:
        assert time.monotonic() < deadline, "the client never noticed the server was gone"
        await asyncio.sleep(0.01)
    await asyncio.wait_for(broker.stop(), timeout=10)
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    assert "Traceback" not in caplog.text


def test_a_service_with_a_wrong_password_stops_at_start(tmp_path: Path) -> None:
    """Its own identity from the settings (as local mode and compose give it), refused:
    one line, exit status 2, no retrying, the password nowhere."""
    import os
    import subprocess
    import sys

    from selfagent.bus.auth import generate_passwords, server_config

    server = EmbeddedNats(
        store_dir=tmp_path / "nats", extra_config=server_config(generate_passwords())
    ).start()
    try:
        env = {k: v for k, v in os.environ.items() if "NATS" not in k and "GROUNDER" not in k}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "selfagent.grounder"],
            env={
                **env,
                "NATS_URL": server.url,
                "GROUNDER_NATS_USER": "grounder",
                "GROUNDER_NATS_PASSWORD": "a-stale-password",
                "GROUNDER_FAMILY": "ocr",
                "GROUNDER_CANARY": "false",
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert time.monotonic() - started < 20
        ours = [line for line in done.stderr.splitlines() if "selfagent.grounder:" in line]
        assert any("cannot run:" in line and "authorization" in line.lower() for line in ours), (
            done.stderr
        )
        # Says who was refused and where that is set.
        assert "as user 'grounder'" in done.stderr and "<SERVICE>_NATS_PASSWORD" in done.stderr
        assert "a-stale-password" not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    finally:
        server.cleanup()
