"""One test body, two buses: FastStream's in-memory test broker and a real nats-server.

This is FastStream's own test-suite style: a handler test takes the
``bus_variant`` fixture and runs twice, once through ``TestNatsBroker``
(no server, no network: the handler logic alone) and once on the session's
real nats-server, so every handler still meets the real server.

    async def test_x(bus_variant: BusVariant) -> None:
        broker = make_broker(bus_variant.url, "x")
        ...                                   # subscribers, as the service wires them
        async with bus_variant.running(broker):
            reply = await broker.request(...)

Modules that use it import the fixture: ``from tests.harness.bus import bus_variant``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from faststream.nats import NatsBroker, TestNatsBroker
from faststream.nats.testing import FakeProducer, change_producer

from selfagent.bus.natsd import EmbeddedNats

Variant = Literal["memory", "nats"]
VARIANTS: tuple[Variant, ...] = ("memory", "nats")

# In memory nothing is dialled; a closed port makes any accidental dial fail at once.
UNUSED_URL = "nats://127.0.0.1:1"
_INBOX = "_INBOX.in-memory"
_REQUESTING: contextvars.ContextVar[bool] = contextvars.ContextVar("_REQUESTING", default=False)


class _RequestsHaveAReplySubject(FakeProducer):
    """FastStream's in-memory producer, with one fidelity fix.

    Over NATS every request carries a reply subject (the requester's inbox);
    FastStream's fake delivers a request without one, so a handler that asks
    "is this a request?" (``typed_handler``: error reply or dead letter)
    would take it for a publish.
    """

    async def request(self, cmd: Any) -> Any:
        token = _REQUESTING.set(True)
        try:
            return await super().request(cmd)
        finally:
            _REQUESTING.reset(token)

    async def _execute_handler(self, msg: Any, subject: str, handler: Any) -> Any:
        if _REQUESTING.get():
            # Only the request's own message: what its handler publishes stays a publish.
            _REQUESTING.set(False)
            msg.reply = _INBOX
        return await super()._execute_handler(msg, subject, handler)


class InMemoryNats(TestNatsBroker):
    @contextlib.contextmanager
    def _patch_producer(self, broker: NatsBroker) -> Iterator[None]:
        with change_producer(broker.config, _RequestsHaveAReplySubject(broker, self.brokers)):
            yield


@dataclass(frozen=True)
class BusVariant:
    name: Variant
    url: str

    @property
    def real(self) -> bool:
        return self.name == "nats"

    @contextlib.asynccontextmanager
    async def running(
        self,
        *brokers: NatsBroker,
        start: Callable[[], Awaitable[None]] | None = None,
        stop: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[None]:
        """The brokers with their subscribers running, on this variant's bus.

        ``start``/``stop`` replace starting the first broker on the real
        server (a service's own ``start()``, which also declares its streams);
        in memory ``stop`` still runs afterwards, to release what the service
        built besides its broker.
        """
        if not self.real:
            try:
                async with InMemoryNats(*brokers):
                    yield
            finally:
                if stop is not None:
                    await stop()
            return
        async with contextlib.AsyncExitStack() as stack:
            first, *rest = brokers
            if start is not None:
                stack.push_async_callback(stop or first.stop)
                await start()
            else:
                stack.push_async_callback(first.stop)
                await first.start()
            for broker in rest:
                stack.push_async_callback(broker.stop)
                await broker.start()
            yield


@pytest.fixture(params=VARIANTS)
def bus_variant(request: pytest.FixtureRequest) -> BusVariant:
    if request.param == "memory":
        return BusVariant("memory", UNUSED_URL)
    server: EmbeddedNats = request.getfixturevalue("nats_server")
    return BusVariant("nats", server.url)
