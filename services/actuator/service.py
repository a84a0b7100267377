"""NATS wiring: one actuator serves one sandbox's act/observe subjects."""

from __future__ import annotations

from faststream.nats import NatsBroker

from selfagent.bus import make_broker, typed_handler
from selfagent.schemas import ActionResult, ActRequest, Observation, ObserveRequest, subjects

from .backend import VncDesktop
from .config import Settings
from .executor import Executor
from .sandbox_exec import SandboxExec

SERVICE = "actuator"


def build(settings: Settings) -> tuple[NatsBroker, VncDesktop, Executor, SandboxExec]:
    broker = make_broker(settings.nats_url, f"{SERVICE}-{settings.sandbox_id}")
    desktop = VncDesktop(
        settings.vnc_host,
        settings.vnc_port,
        settings.vnc_password.get_secret_value() if settings.vnc_password else None,
        connect_timeout=settings.vnc_connect_timeout,
        retry_interval=settings.vnc_retry_interval,
        wait_for_link=settings.vnc_wait_for_link,
    )
    sandbox = SandboxExec(
        settings.exec_url,
        settings.exec_token.get_secret_value() if settings.exec_token else None,
        settings.exec_timeout_margin,
    )
    executor = Executor(desktop, sandbox, settings)

    act_subject = subjects.sandbox_act(settings.sandbox_id)
    observe_subject = subjects.sandbox_observe(settings.sandbox_id)

    @broker.subscriber(act_subject, title="act", description="Execute one action")
    @typed_handler(broker, SERVICE, ActRequest, act_subject)
    async def act(request: ActRequest) -> ActionResult:
        return await executor.act(request)

    @broker.subscriber(observe_subject, title="observe", description="Take a screenshot")
    @typed_handler(broker, SERVICE, ObserveRequest, observe_subject)
    async def observe(request: ObserveRequest) -> Observation:
        return await executor.observe(request)

    return broker, desktop, executor, sandbox
