"""What route handlers get injected: the one ``Gateway`` of the app (see ``create_app``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from .bus import GatewayBus
from .catalog import SessionCatalog
from .config import Settings
from .hub import EventHub, TakeoverState
from .vnc_bridge import BridgeStats


@dataclass
class Gateway:
    settings: Settings
    hub: EventHub
    takeover: TakeoverState
    bus: GatewayBus
    catalog: SessionCatalog
    vnc: BridgeStats = field(default_factory=BridgeStats)

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        hub = EventHub()
        takeover = TakeoverState(hub, per_session=settings.desktops == "per_session")
        bus = GatewayBus(settings, hub, takeover)
        return cls(settings, hub, takeover, bus, SessionCatalog(settings, bus))


def get_gateway(conn: HTTPConnection) -> Gateway:
    gateway: Gateway = conn.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
