"""``typed_handler``: what a subscriber does with bad input and with its own failures.

Each test runs twice (``bus_variant``): on FastStream's in-memory test broker
and on a real nats-server, with the same body.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from pydantic import BaseModel

from selfagent.bus import NO_REPLY, RemoteError, RequestTimeout, make_broker, request, typed_handler
from selfagent.schemas import DeadLetter, ErrorCode, ErrorReply, Reply, subjects
from selfagent.schemas.messages import Message
from tests.harness.bus import BusVariant, bus_variant

__all__ = ["bus_variant"]


class Ping(Message):
    n: int
    text: str = ""


class Pong(Reply):
    # Defaults, as every reply model has: an error reply carries none of them.
    n: int = 0


@dataclass
class Probe:
    """A broker with one typed handler on ``subject`` and a dead-letter collector."""

    broker: NatsBroker
    service: str
    subject: str
    seen: list[Ping] = field(default_factory=list)
    letters: asyncio.Queue[DeadLetter] = field(default_factory=asyncio.Queue)


def probe(variant: BusVariant) -> Probe:
    # Names of their own: the real server is shared by the whole session.
    service = f"probe{uuid.uuid4().hex[:8]}"
    p = Probe(make_broker(variant.url, service), service, f"test.{service}.ping")

    @p.broker.subscriber(p.subject)
    @typed_handler(p.broker, service, Ping, p.subject)
    async def ping(message: Ping) -> Pong | None:
        p.seen.append(message)
        if message.text == "boom":
            raise RuntimeError("the handler broke")
        return Pong(n=message.n + 1)

    @p.broker.subscriber(subjects.dead_letter(service))
    async def dead_letters(msg: NatsMessage) -> None:
        p.letters.put_nowait(DeadLetter.model_validate_json(msg.body))

    return p


async def test_valid_request_gets_the_typed_reply(bus_variant: BusVariant) -> None:
    p = probe(bus_variant)
    async with bus_variant.running(p.broker):
        reply = await request(p.broker, p.subject, Ping(n=41), Pong, timeout=5)
    assert reply.ok and reply.n == 42
    assert p.seen == [Ping(n=41)]


async def test_invalid_request_gets_a_typed_error_reply(bus_variant: BusVariant) -> None:
    p = probe(bus_variant)
    async with bus_variant.running(p.broker):
        raw = await p.broker.request(b'{"n": "many", "colour": "red"}', p.subject, timeout=5)
        reply = ErrorReply.model_validate_json(raw.body)
        assert not reply.ok and reply.error is not None
        assert reply.error.code == ErrorCode.INVALID_MESSAGE
        # The field paths that failed, each by name.
        assert "n:" in reply.error.message and "colour:" in reply.error.message
        assert p.subject in reply.error.message
        # Through the typed helper: a RemoteError with the code, not a timeout.
        with pytest.raises(RemoteError) as raised:
            await request(p.broker, p.subject, Pong(n=1), Pong, timeout=5)
        assert raised.value.code == ErrorCode.INVALID_MESSAGE
    # A request answered with an error is not also dead-lettered.
    assert p.letters.empty()
    assert p.seen == []


async def test_invalid_publish_goes_to_the_dead_letters(bus_variant: BusVariant) -> None:
    p = probe(bus_variant)
    async with bus_variant.running(p.broker):
        await p.broker.publish(b'{"n": "many"}', p.subject)
        letter = await asyncio.wait_for(p.letters.get(), 5)
        # The subscriber is still there for the next message.
        assert (await request(p.broker, p.subject, Ping(n=1), Pong, timeout=5)).n == 2
    assert letter.service == p.service
    assert letter.subject == p.subject
    assert letter.payload == '{"n": "many"}'
    assert "n:" in letter.error and p.subject in letter.error
    assert p.seen == [Ping(n=1)]


async def test_unexpected_exception_is_an_internal_error_reply(bus_variant: BusVariant) -> None:
    p = probe(bus_variant)
    async with bus_variant.running(p.broker):
        with pytest.raises(RemoteError) as raised:
            await request(p.broker, p.subject, Ping(n=1, text="boom"), Pong, timeout=5)
        assert raised.value.code == ErrorCode.INTERNAL
        assert "RuntimeError: the handler broke" in str(raised.value)
        # A publish that breaks the handler has nobody to answer: logged, not
        # dead-lettered (the message itself was valid), and the handler lives on.
        await p.broker.publish(Ping(n=2, text="boom"), p.subject)
        assert (await request(p.broker, p.subject, Ping(n=3), Pong, timeout=5)).n == 4
    assert [m.n for m in p.seen] == [1, 2, 3]
    assert p.letters.empty()


async def test_no_reply_leaves_the_request_to_the_subscriber_that_answers(
    bus_variant: BusVariant,
) -> None:
    if not bus_variant.real:
        pytest.skip("who answers first is the server's doing: a real nats-server only")
    service = f"probe{uuid.uuid4().hex[:8]}"
    subject = f"test.{service}.ping"
    broker = make_broker(bus_variant.url, service)
    silent_saw: list[int] = []

    # Two subscribers without a queue group, as an actuator per host: the one
    # that is not concerned answers at once with NO_REPLY, the other later.
    @broker.subscriber(subject)
    @typed_handler(broker, service, Ping, subject)
    async def silent(message: Ping) -> BaseModel:
        silent_saw.append(message.n)
        return NO_REPLY

    @broker.subscriber(subject)
    @typed_handler(broker, service, Ping, subject)
    async def answers(message: Ping) -> Pong:
        await asyncio.sleep(0.3)
        return Pong(n=message.n + 1)

    lonely = f"test.{service}.lonely"

    @broker.subscriber(lonely)
    @typed_handler(broker, service, Ping, lonely)
    async def nobody(message: Ping) -> BaseModel:
        return NO_REPLY

    async with bus_variant.running(broker):
        reply = await request(broker, subject, Ping(n=1), Pong, timeout=5)
        assert reply.ok and reply.n == 2
        # Alone, it sends nothing at all (not an empty reply): the request times out.
        with pytest.raises(RequestTimeout):
            await request(broker, lonely, Ping(n=1), Pong, timeout=0.5)
    assert silent_saw == [1]
