"""Check a service's model endpoint, log what was found, and tell the bus every 10 s.

The planner and the grounder run one each. The endpoint is checked again
every 30 s while something is wrong (a model server started after
selfagent is found within that), every 5 minutes while all is well.
"""

from __future__ import annotations

import asyncio
import logging
import time

from faststream.nats import NatsBroker

from selfagent.modelcheck import EndpointReport, check_endpoint
from selfagent.schemas import ModelStatus, subjects

log = logging.getLogger(__name__)

PUBLISH_EVERY = 10.0
RECHECK_WHEN_WRONG = 30.0
RECHECK_WHEN_FINE = 300.0


async def watch_model(
    broker: NatsBroker,
    service: str,
    url: str,
    model: str,
    api_key: str | None,
    *,
    prefix: str,
) -> None:
    """Runs until cancelled; never raises for what it finds."""
    last: EndpointReport | None = None
    checked = 0.0
    while True:
        wait = RECHECK_WHEN_FINE if last is not None and last.ok else RECHECK_WHEN_WRONG
        if last is None or time.monotonic() - checked >= wait:
            report = await check_endpoint(url, model, api_key, prefix=prefix)
            if last is None or report.lines() != last.lines():
                for line in report.lines():
                    (log.info if report.ok else log.warning)("model endpoint: %s", line)
            last, checked = report, time.monotonic()
        status = ModelStatus(
            service=service,
            url=last.url,
            model=last.model,
            reachable=last.reachable,
            ok=last.ok,
            problems=[] if last.ok else last.lines(),
        )
        try:
            await broker.publish(status, subjects.status(service))
        except Exception as exc:
            log.debug("status not sent: %s", exc)
        await asyncio.sleep(PUBLISH_EVERY)
