"""The gateway as a service: the web app served by uvicorn, with its bus side.

The HTTP server runs inside the service's event loop (not ``uvicorn.run``),
so the gateway starts, stops and reports a failed start like the other
services; the app's lifespan starts and stops the bus side
(:class:`~selfagent.gateway.bus.GatewayBus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from selfagent.bus import Service
from selfagent.errors import ConfigError

from .app import create_app
from .config import Settings
from .deps import Gateway
from .security import install_redaction

log = logging.getLogger(__name__)

# Open requests (a /api/chat waits up to GATEWAY_CHAT_TIMEOUT) get this long
# to finish once the gateway is asked to stop.
GRACEFUL_SHUTDOWN = 5


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service runner owns SIGINT/SIGTERM and calls stop().
        yield


class GatewayService(Service):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.gateway = Gateway.build(settings)
        self.app = create_app(self.gateway)
        self.server = _Server(
            uvicorn.Config(
                self.app,
                host=settings.host,
                port=settings.port,
                # The sans-I/O WebSocket protocol: one gateway relays twice the
                # events to 50 viewers for a third less CPU than with the
                # legacy one (bench/viewers.py).
                ws="websockets-sansio",
                log_level="info",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            )
        )
        # After uvicorn's Config, which (re)configured its loggers: every line
        # written from here on, the access log included, goes through it.
        install_redaction(
            [settings.token.get_secret_value(), settings.exec_token.get_secret_value()]
        )
        # The lifespan stops the bus side; this covers a server that never got that far.
        self.resources.push_async_callback(self.gateway.bus.stop)

    async def _start(self) -> None:
        bus = self.gateway.bus
        # The bus side failing (NATS refused our credentials) ends the gateway.
        self.spawn(bus.wait(), name="gateway-bus", errors_are_fatal=True)
        serving = self.spawn(self._serve(), name="gateway-http", errors_are_fatal=True)
        self.resources.push_async_callback(self._shut_down, serving)
        while not self.server.started:
            if serving.done():
                serving.result()
                raise ConfigError("the gateway's HTTP server ended before it started")
            await asyncio.wait({serving}, timeout=0.05)
        log.info("gateway ready on %s:%d", self.settings.host, self.settings.port)

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        except SystemExit:
            # uvicorn exits when it cannot listen or the app's start-up failed,
            # after logging why.
            raise ConfigError(
                f"cannot serve on {self.settings.host}:{self.settings.port} (see above)"
            ) from None

    async def _shut_down(self, serving: asyncio.Task[object]) -> None:
        self.server.should_exit = True
        await asyncio.wait({serving})


def build(settings: Settings) -> GatewayService:
    return GatewayService(settings)
