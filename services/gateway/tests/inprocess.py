"""The gateway inside the test's own process, two ways.

* :func:`app_on_bus`: the FastAPI app with its bus side started by the app's
  own lifespan, for HTTP through ``httpx.ASGITransport`` (no socket, no
  server process): what routes answer, validation, authentication.
* :func:`serve`: the whole ``GatewayService`` (uvicorn on a real port, the
  same object ``python -m selfagent.gateway`` runs), for real WebSockets and
  the VNC bridge, with the gateway's state (bridge counters, take-over) in
  reach of the test.

Both talk to a real nats-server. ``stack.start_gateway`` still runs the
gateway as a process, for the tests of the process itself.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from selfagent.bus.natsd import free_port
from selfagent.gateway.app import create_app
from selfagent.gateway.config import Settings
from selfagent.gateway.deps import Gateway
from selfagent.gateway.service import GatewayService, build

# What ASGITransport puts in the Host header; a name the cookie jar accepts.
ASGI_BASE_URL = "http://testserver"
NATS_WAIT = 30.0


def settings(nats_url: str, vnc_port: int | None = None, **overrides: Any) -> Settings:
    """Gateway settings for a test: a fresh token, loopback, a free port."""
    values: dict[str, Any] = {
        "SELFAGENT_TOKEN": secrets.token_urlsafe(24),
        "nats_url": nats_url,
        "host": "127.0.0.1",
        "port": free_port(),
        "vnc_host": "127.0.0.1",
        # Nothing listens there unless a test gives a desktop's port.
        "vnc_port": vnc_port or free_port(),
        **overrides,
    }
    return Settings(**values)


def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.token.get_secret_value()}"}


@dataclass
class AppOnBus:
    gateway: Gateway
    app: FastAPI

    @property
    def token(self) -> str:
        return self.gateway.settings.token.get_secret_value()

    @property
    def auth(self) -> dict[str, str]:
        return auth(self.gateway.settings)

    def client(self, *, authenticated: bool = True) -> httpx.AsyncClient:
        """An HTTP client that calls the app directly (ASGI), with or without the token."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=ASGI_BASE_URL,
            headers=self.auth if authenticated else None,
        )


@asynccontextmanager
async def app_on_bus(settings: Settings, *, wait_for_nats: bool = True) -> AsyncIterator[AppOnBus]:
    gateway = Gateway.build(settings)
    app = create_app(gateway)
    # ASGITransport sends no lifespan events: run the app's lifespan as uvicorn does.
    async with app.router.lifespan_context(app):
        if wait_for_nats:
            await asyncio.wait_for(gateway.bus.wait_ready(), NATS_WAIT)
        yield AppOnBus(gateway, app)


@dataclass
class Served:
    """A running ``GatewayService``, addressed like ``stack.GatewayProcess``."""

    service: GatewayService

    @property
    def gateway(self) -> Gateway:
        return self.service.gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.settings.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def token(self) -> str:
        return self.gateway.settings.token.get_secret_value()

    @property
    def auth(self) -> dict[str, str]:
        return auth(self.gateway.settings)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    service = build(settings)
    await service.start()
    try:
        await asyncio.wait_for(service.gateway.bus.wait_ready(), NATS_WAIT)
        yield Served(service)
    finally:
        await service.stop()
