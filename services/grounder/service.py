"""The grounder as a service: ``agent.ground`` in the ``grounder`` queue group.

Replicas share the work through the queue group; each replica also runs up
to ``GROUNDER_CONCURRENCY`` requests at once (the work is waiting on the
model endpoint, not CPU), so one slow model call never blocks the others.

Each replica publishes a ``GrounderHeartbeat`` every second, and at once when
it takes a request, naming the requests it is working on: a planner whose
request was taken by a replica that then died sees it fall silent and asks
again, instead of waiting out its grounding timeout.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime

from selfagent.bus import Service, make_broker, metrics, start_with_retry, typed_handler
from selfagent.bus.heartbeat import beat_forever, send_beat
from selfagent.bus.modelwatch import watch_model
from selfagent.modelcheck import reachable_url
from selfagent.schemas import GrounderHeartbeat, GroundRequest, GroundResult, subjects

from .canary import run_canary
from .config import Settings
from .grounder import Grounder

log = logging.getLogger(__name__)

SERVICE = "grounder"


class GrounderService(Service):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.broker = make_broker(settings.nats_url, SERVICE, settings.bus_auth())
        self.grounder = Grounder.from_settings(settings)
        self.instance = f"{SERVICE}-{secrets.token_hex(4)}"
        self.started_at = datetime.now(UTC)
        # The request ids being grounded now, for the heartbeats.
        self.grounding: set[str] = set()
        self.resources.push_async_callback(self.grounder.aclose)
        self.resources.push_async_callback(self.broker.stop)
        self._subscribe()

    def _subscribe(self) -> None:
        broker, grounder = self.broker, self.grounder
        metrics.GROUNDER_CONCURRENCY.set(self.settings.concurrency)
        subscriber = broker.subscriber(
            subjects.GROUND,
            queue=subjects.GROUNDER_QUEUE,
            max_workers=self.settings.concurrency,
            title="ground",
            description="GroundRequest -> GroundResult",
        )

        @subscriber
        @typed_handler(broker, SERVICE, GroundRequest, subjects.GROUND)
        async def ground(request: GroundRequest) -> GroundResult:
            self.grounding.add(request.request_id)
            try:
                # Claimed at once: the requester learns which replica holds it.
                await send_beat(self.broker, subjects.GROUNDER_HEARTBEAT, self._beat())
                # A request without sent_at (an older client) has no wait to tell.
                if "sent_at" in request.model_fields_set:
                    metrics.queued_since(request.sent_at)
                with metrics.GROUNDER_IN_FLIGHT.track_inprogress():
                    started = time.monotonic()
                    result = await grounder.ground(request)
                metrics.grounded(started, ok=result.ok, found=result.found)
                return result
            finally:
                self.grounding.discard(request.request_id)

    def _beat(self) -> GrounderHeartbeat:
        return GrounderHeartbeat(
            instance=self.instance, started_at=self.started_at, grounding=sorted(self.grounding)
        )

    async def _start(self) -> None:
        await start_with_retry(self.broker)
        self.spawn(
            beat_forever(
                self.broker,
                subjects.GROUNDER_HEARTBEAT,
                self._beat,
                self.settings.heartbeat_interval,
            ),
            name="grounder-heartbeat",
        )
        log.info(
            "grounder ready: %s, concurrency %d, NATS %s (instance %s)",
            self.grounder.method,
            self.settings.concurrency,
            self.broker.address,
            self.instance,
        )
        settings = self.settings
        if settings.uses_model:
            url, note = reachable_url(settings.api_base_url)
            if note:
                log.warning("GROUNDER_API_BASE_URL: %s", note)
            self.spawn(
                watch_model(
                    self.broker,
                    SERVICE,
                    url,
                    settings.model,
                    settings.api_key,
                    prefix="GROUNDER_",
                ),
                name="grounder-model-watch",
            )
        if self.settings.canary:
            # In the background: the service answers while the model warms up.
            self.spawn(run_canary(self.grounder), name="grounder-canary")


def build(settings: Settings) -> GrounderService:
    return GrounderService(settings)
