"""What route handlers get injected: one ``Gateway`` per app, built by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from .bus import GatewayBus
from .config import Settings
from .hub import EventHub, TakeoverState
from .vnc_bridge import BridgeStats


@dataclass
class Gateway:
    settings: Settings
    hub: EventHub
    takeover: TakeoverState
    bus: GatewayBus
    vnc: BridgeStats = field(default_factory=BridgeStats)

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        hub = EventHub()
        takeover = TakeoverState(hub)
        return cls(settings, hub, takeover, GatewayBus(settings, hub, takeover))


def get_gateway(conn: HTTPConnection) -> Gateway:
    gateway: Gateway = conn.app.state.gateway
    return gateway


def get_settings(gateway: Annotated[Gateway, Depends(get_gateway)]) -> Settings:
    return gateway.settings


def get_bus(gateway: Annotated[Gateway, Depends(get_gateway)]) -> GatewayBus:
    return gateway.bus


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BusDep = Annotated[GatewayBus, Depends(get_bus)]
