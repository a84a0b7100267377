"""Wiring the grounder onto the bus: ``agent.ground`` in the ``grounder`` queue group.

Replicas share the work through the queue group; each replica also runs up
to ``GROUNDER_CONCURRENCY`` requests at once (the work is waiting on the
model endpoint, not CPU), so one slow model call never blocks the others.
"""

from __future__ import annotations

from faststream.nats import NatsBroker

from selfagent.bus import make_broker, typed_handler
from selfagent.schemas import GroundRequest, GroundResult, subjects

from .config import Settings
from .grounder import Grounder

SERVICE = "grounder"


def attach(broker: NatsBroker, grounder: Grounder, concurrency: int) -> None:
    subscriber = broker.subscriber(
        subjects.GROUND,
        queue=subjects.GROUNDER_QUEUE,
        max_workers=concurrency,
        title="ground",
        description="GroundRequest -> GroundResult",
    )

    @subscriber
    @typed_handler(broker, SERVICE, GroundRequest, subjects.GROUND)
    async def ground(request: GroundRequest) -> GroundResult:
        return await grounder.ground(request)


def build(settings: Settings) -> tuple[NatsBroker, Grounder]:
    broker = make_broker(settings.nats_url, SERVICE)
    grounder = Grounder.from_settings(settings)
    attach(broker, grounder, settings.concurrency)
    return broker, grounder
