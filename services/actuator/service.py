"""The actuator as a service: one actuator serves one sandbox's act/observe subjects."""

from __future__ import annotations

import logging

from selfagent.bus import Service, make_broker, start_with_retry, typed_handler
from selfagent.schemas import ActionResult, ActRequest, Observation, ObserveRequest, subjects

from .backend import VncDesktop
from .config import Settings
from .executor import Executor
from .sandbox_exec import SandboxExec

log = logging.getLogger(__name__)

SERVICE = "actuator"


class ActuatorService(Service):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.broker = make_broker(settings.nats_url, f"{SERVICE}-{settings.sandbox_id}")
        self.desktop = VncDesktop(
            settings.vnc_host,
            settings.vnc_port,
            settings.vnc_password.get_secret_value() if settings.vnc_password else None,
            connect_timeout=settings.vnc_connect_timeout,
            retry_interval=settings.vnc_retry_interval,
            wait_for_link=settings.vnc_wait_for_link,
        )
        self.sandbox = SandboxExec(
            settings.exec_url,
            settings.exec_token.get_secret_value() if settings.exec_token else None,
            settings.exec_timeout_margin,
        )
        self.executor = Executor(self.desktop, self.sandbox, settings)
        # Released in reverse: the bus first (no new actions), then the VNC link.
        self.resources.push_async_callback(self.sandbox.close)
        self.resources.push_async_callback(self.desktop.stop)
        self.resources.push_async_callback(self.broker.stop)
        self._subscribe()

    def _subscribe(self) -> None:
        broker, executor = self.broker, self.executor
        act_subject = subjects.sandbox_act(self.settings.sandbox_id)
        observe_subject = subjects.sandbox_observe(self.settings.sandbox_id)

        @broker.subscriber(act_subject, title="act", description="Execute one action")
        @typed_handler(broker, SERVICE, ActRequest, act_subject)
        async def act(request: ActRequest) -> ActionResult:
            return await executor.act(request)

        @broker.subscriber(observe_subject, title="observe", description="Take a screenshot")
        @typed_handler(broker, SERVICE, ObserveRequest, observe_subject)
        async def observe(request: ObserveRequest) -> Observation:
            return await executor.observe(request)

    async def _start(self) -> None:
        # The VNC link comes up (and keeps coming back) in the background; an
        # action before it is up gets a clear "not executed" error.
        await self.desktop.start()
        await start_with_retry(self.broker)
        log.info("actuator for sandbox %r ready", self.settings.sandbox_id)


def build(settings: Settings) -> ActuatorService:
    return ActuatorService(settings)
