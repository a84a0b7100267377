"""selfagent.client against a real nats-server with the generated permissions, over TLS
with a certificate this test makes, and what a refused publish does.

The whole loop through the real services (submit, follow, stop) is in tests/test_e2e.py.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client

from selfagent.bus import make_broker, start_with_retry
from selfagent.bus.auth import ADMIN, AUTOMATION, generate_passwords, server_config
from selfagent.bus.natsd import EmbeddedNats
from selfagent.bus.settings import BusAuth
from selfagent.bus.streams import ensure_streams
from selfagent.client import AutomationClient
from selfagent.errors import BusAuthError
from selfagent.schemas import ActRequest, AgentMessage, TaskFinished, TaskSubmitted, subjects
from selfagent.schemas.actions import WaitAction

PASSWORDS = generate_passwords()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selfagent test nats")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "nats.crt", directory / "nats.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    tls = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
    server = EmbeddedNats(store_dir=directory / "nats", extra_config=server_config(PASSWORDS) + tls)
    server.start()
    yield server, cert
    server.cleanup()


@pytest.fixture
async def admin(tls_nats: tuple[EmbeddedNats, Path]) -> AsyncIterator[Client]:
    """A client as the admin, with the streams declared by a service that trusts the CA."""
    server, cert = tls_nats
    gateway = make_broker(
        server.url,
        "gateway",
        BusAuth(user="gateway", password=PASSWORDS["gateway"], ca_file=str(cert)),
    )
    await asyncio.wait_for(start_with_retry(gateway, before_start=ensure_streams), 20)
    await gateway.stop()
    context = ssl.create_default_context(cafile=str(cert))
    client = await nats.connect(
        server.url, user=ADMIN, password=PASSWORDS[ADMIN], tls=context, allow_reconnect=False
    )
    yield client
    await client.close()


async def automation(server: EmbeddedNats, cert: Path) -> AutomationClient:
    return await AutomationClient.connect(
        server.url, AUTOMATION, PASSWORDS[AUTOMATION], ca_file=str(cert), timeout=5
    )


async def test_submit_follow_and_stop_over_tls(
    tls_nats: tuple[EmbeddedNats, Path], admin: Client
) -> None:
    server, cert = tls_nats
    async with await automation(server, cert) as client:
        task = await client.submit("open the terminal", max_steps=3)
        # Stored in the work queue for a planner, exactly as sent.
        js = admin.jetstream()
        stored = await js.get_msg(subjects.TASKS_STREAM, subject=subjects.TASK_SUBMIT, direct=False)
        assert TaskSubmitted.model_validate_json(stored.data or b"") == task

        # A planner's events (published here by the admin), some before following began.
        def event(text: str) -> bytes:
            message = AgentMessage(session_id=task.session_id, task_id=task.task_id, text=text)
            return message.model_dump_json().encode()

        kind = subjects.session_event(task.session_id, "message")
        await js.publish(kind, event("first"))
        other = AgentMessage(session_id=task.session_id, task_id="another", text="not ours")
        await js.publish(kind, other.model_dump_json().encode())
        followed: list[str] = []

        async def follow() -> None:
            async for got in client.follow(task):
                followed.append(got.kind if isinstance(got, TaskFinished) else got.text)  # type: ignore[union-attr]

        following = asyncio.create_task(follow())
        await asyncio.sleep(0.3)
        await js.publish(kind, event("second"))
        finished = TaskFinished(
            session_id=task.session_id, task_id=task.task_id, status="stopped", reply="", steps=1
        )
        await js.publish(
            subjects.session_event(task.session_id, "task.finished"),
            finished.model_dump_json().encode(),
        )
        await asyncio.wait_for(following, 10)
        assert followed == ["first", "second", "task.finished"]
        assert await client.wait(task, timeout=5) == finished

        # Stop: a ControlCommand on the session's control subject.
        controls = await admin.subscribe(subjects.session_control(task.session_id))
        await client.stop(task.session_id)
        command = await controls.next_msg(timeout=5)
        assert b'"command":"stop"' in command.data


async def test_publishing_outside_its_permissions_raises_and_nothing_arrives(
    tls_nats: tuple[EmbeddedNats, Path], admin: Client
) -> None:
    server, cert = tls_nats
    watched = await admin.subscribe(subjects.sandbox_act("default"))
    await admin.flush()
    async with await automation(server, cert) as client:
        act = ActRequest(action=WaitAction(seconds=0.1))
        with pytest.raises(BusAuthError) as raised:
            await client.publish(subjects.sandbox_act("default"), act)
        assert "permissions violation" in str(raised.value)
        assert PASSWORDS[AUTOMATION] not in str(raised.value)
        # The connection stays usable for what it may do.
        await client.stop("s1")
    with pytest.raises(nats.errors.TimeoutError):
        await watched.next_msg(timeout=0.5)


async def test_refused_credentials_and_an_untrusted_certificate(
    tls_nats: tuple[EmbeddedNats, Path],
) -> None:
    server, cert = tls_nats
    with pytest.raises(BusAuthError) as raised:
        await AutomationClient.connect(
            server.url, AUTOMATION, "a-wrong-password", ca_file=str(cert)
        )
    assert "a-wrong-password" not in str(raised.value)
    # Without the CA the server's certificate is not trusted: no connection.
    with pytest.raises(Exception) as untrusted:
        await asyncio.wait_for(
            nats.connect(
                server.url,
                user=AUTOMATION,
                password=PASSWORDS[AUTOMATION],
                tls=ssl.create_default_context(),
                allow_reconnect=False,
            ),
            10,
        )
    assert "certificate" in repr(untrusted.value).lower() or isinstance(
        untrusted.value, ssl.SSLError
    )


async def test_credentials_file_from_local_mode(
    tmp_path: Path, tls_nats: tuple[EmbeddedNats, Path]
) -> None:
    """The env file `selfagent up` writes is enough to connect."""
    from selfagent.bus.auth import ClientCredentials

    server, cert = tls_nats
    path = tmp_path / "automation.env"
    ClientCredentials(server.url, AUTOMATION, PASSWORDS[AUTOMATION], str(cert)).write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    client = await AutomationClient.connect(credentials_file=path)
    await client.stop("s1")
    await client.close()
