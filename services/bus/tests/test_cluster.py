"""A three-node NATS cluster under the bus: URL lists, replicated streams, and failover.

Real parts only: three nats-servers (routes, JetStream) on loopback, with the
project's own authorization block, and the broker every service uses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import nats
import pytest
from faststream.nats.annotations import NatsMessage as NatsMessageCtx
from nats.js.api import StreamInfo

from selfagent.bus.auth import ADMIN, server_config
from selfagent.bus.broker import Broker, make_broker, server_list, start_with_retry
from selfagent.bus.healthcheck import check
from selfagent.bus.jetstream import jetstream
from selfagent.bus.natsd import EmbeddedCluster, EmbeddedNats
from selfagent.bus.sessions import ensure_bucket
from selfagent.bus.settings import BusAuth, ServiceSettings
from selfagent.bus.streams import STREAM_CONFIGS, ensure_streams
from selfagent.schemas import subjects

PASSWORD = "cluster-admin-password"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    nodes = EmbeddedCluster(3, extra_config=server_config({ADMIN: PASSWORD})).start()
    yield nodes
    nodes.cleanup()


def admin() -> BusAuth:
    return BusAuth(user=ADMIN, password=PASSWORD, replicas=3)


def test_server_list_splits_and_trims() -> None:
    assert server_list("nats://a:4222") == ["nats://a:4222"]
    assert server_list(" nats://a:4222, nats://b:4222 ,,nats://c:4222") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    with pytest.raises(ValueError):
        server_list(" , ")


class _Settings(ServiceSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "CLUSTERTEST_"}


def test_replicas_read_like_the_other_nats_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_REPLICAS", raising=False)
    assert _Settings().bus_auth().replicas == 1
    monkeypatch.setenv("NATS_REPLICAS", "3")
    assert _Settings().bus_auth().replicas == 3
    monkeypatch.setenv("CLUSTERTEST_NATS_REPLICAS", "2")
    assert _Settings().bus_auth().replicas == 2
    monkeypatch.setenv("CLUSTERTEST_NATS_REPLICAS", "0")
    with pytest.raises(ValueError):
        _Settings()


async def test_declared_with_the_configured_replicas(cluster: EmbeddedCluster) -> None:
    broker = make_broker(cluster.url, "cluster-declare", admin())
    await asyncio.wait_for(start_with_retry(broker, before_start=ensure_streams), 30)
    try:
        await ensure_bucket(broker)
        js = jetstream(broker)
        for config in STREAM_CONFIGS:
            assert config.name is not None
            info = await js.stream_info(config.name)
            assert info.config.num_replicas == 3, (config.name, info.config)
            assert _copies(info) == 3, (config.name, info.cluster)
        bucket = await js.stream_info(f"KV_{subjects.SESSIONS_BUCKET}")
        assert bucket.config.num_replicas == 3 and _copies(bucket) == 3
    finally:
        await broker.stop()


def _copies(info: StreamInfo) -> int:
    assert info.cluster is not None
    return 1 + len(info.cluster.replicas or [])


async def test_health_check_takes_any_member_that_answers(cluster: EmbeddedCluster) -> None:
    first = cluster.nodes[0]
    auth = admin()
    # The first listed server is a closed port: the check goes on to the next.
    await check(f"nats://127.0.0.1:1,{first.url}", 2.0, auth)
    with pytest.raises((OSError, nats.errors.Error)):
        await check("nats://127.0.0.1:1", 1.0, auth)


async def test_broker_fails_over_when_its_node_dies(cluster: EmbeddedCluster) -> None:
    """Kill the member the broker is on: it reconnects to another, and a request and
    a JetStream publish work again, with nothing stored lost."""
    responder = make_broker(cluster.url, "cluster-responder", admin())
    requester = make_broker(cluster.url, "cluster-requester", admin())

    @responder.subscriber("cluster.echo")
    async def echo(body: str) -> str:
        return body.upper()

    await asyncio.wait_for(start_with_retry(responder, before_start=ensure_streams), 30)
    await asyncio.wait_for(start_with_retry(requester), 30)
    try:
        reply = await requester.request("hi", "cluster.echo", timeout=5)
        assert reply.body == b"HI"
        js = jetstream(requester)
        subject = subjects.dead_letter("cluster-test")
        before = await js.publish(subject, b"before")

        victim = cluster.node_at(_connected(requester))
        victim.kill()
        started = time.monotonic()
        try:
            deadline = started + 20
            while True:
                try:
                    reply = await requester.request("again", "cluster.echo", timeout=2)
                    after = await js.publish(subject, b"after", timeout=2)
                    break
                except (nats.errors.Error, TimeoutError):
                    assert time.monotonic() < deadline, "no failover within 20 s"
                    await asyncio.sleep(0.2)
            assert reply.body == b"AGAIN"
            assert _connected(requester) != victim.url
            # The same stream, one message further: nothing stored was lost.
            assert after.stream == before.stream and after.seq == before.seq + 1
            assert (await js.get_msg(before.stream, before.seq)).data == b"before"
        finally:
            victim.start()
            cluster.wait_ready()
    finally:
        await requester.stop()
        await responder.stop()


def _connected(broker: Broker) -> str:
    connection = broker.config.connection_state.connection
    url = connection.connected_url
    assert url is not None
    return f"{url.scheme}://{url.hostname}:{url.port}"


async def test_stored_events_are_acknowledged_by_the_stream_only(nats_server: EmbeddedNats) -> None:
    """A subscriber of events never answers in the stream's place, and queued events
    arrive in order, each stored once with its own message id."""
    publisher = make_broker(nats_server.url, "stored-publisher")
    listener = make_broker(nats_server.url, "stored-listener")
    session = f"acked-{time.monotonic_ns()}"
    seen: list[str] = []
    replies: set[str] = set()

    @listener.subscriber(subjects.SESSION_EVENTS_ALL)
    async def relay(msg: NatsMessageCtx) -> dict[str, str]:
        # FastStream sends this to the message's reply subject (the
        # publisher's acknowledgement inbox) unless the broker blanks it.
        seen.append(json.loads(msg.body)["text"])
        replies.add(msg.reply_to)
        return {"not": "an ack"}

    await asyncio.wait_for(start_with_retry(listener, before_start=ensure_streams), 20)
    await asyncio.wait_for(start_with_retry(publisher), 20)
    try:
        subject = subjects.session_event(session, "message")
        for _ in range(20):
            ack = await publisher.publish({"text": "acked"}, subject, stream=subjects.EVENTS_STREAM)
            assert ack.stream == subjects.EVENTS_STREAM and ack.seq > 0
        for index in range(50):
            await publisher.publish({"text": str(index)}, subject)
        deadline = time.monotonic() + 10
        while len(seen) < 70:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)
        assert seen[20:] == [str(index) for index in range(50)]
        assert replies == {""}, replies
        js = jetstream(publisher)
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subject)
        assert info.state.subjects == {subject: 70}, info.state
    finally:
        await publisher.stop()
        await listener.stop()
