"""The grounder as a service: ``agent.ground`` in the ``grounder`` queue group.

Replicas share the work through the queue group; each replica also runs up
to ``GROUNDER_CONCURRENCY`` requests at once (the work is waiting on the
model endpoint, not CPU), so one slow model call never blocks the others.
"""

from __future__ import annotations

import logging
import time

from selfagent.bus import Service, make_broker, metrics, start_with_retry, typed_handler
from selfagent.bus.modelwatch import watch_model
from selfagent.modelcheck import reachable_url
from selfagent.schemas import GroundRequest, GroundResult, subjects

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
            # A request without sent_at (an older client) has no wait to tell.
            if "sent_at" in request.model_fields_set:
                metrics.queued_since(request.sent_at)
            with metrics.GROUNDER_IN_FLIGHT.track_inprogress():
                started = time.monotonic()
                result = await grounder.ground(request)
            metrics.grounded(started, ok=result.ok, found=result.found)
            return result

    async def _start(self) -> None:
        await start_with_retry(self.broker)
        log.info(
            "grounder ready: %s, concurrency %d, NATS %s",
            self.grounder.method,
            self.settings.concurrency,
            self.broker.address,
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
