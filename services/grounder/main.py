"""Entry point: ``python -m selfagent.grounder``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from selfagent.bus import start_with_retry
from selfagent.bus.runtime import configure_logging, wait_for_shutdown

from .canary import run_canary
from .config import Settings
from .service import build

log = logging.getLogger("selfagent.grounder")


async def serve(settings: Settings) -> None:
    broker, grounder = build(settings)
    canary: asyncio.Task[object] | None = None
    try:
        await start_with_retry(broker)
        log.info(
            "grounder ready: %s, concurrency %d, NATS %s",
            grounder.method,
            settings.concurrency,
            settings.nats_url,
        )
        if settings.canary:
            # In the background: the service answers while the model warms up.
            canary = asyncio.create_task(run_canary(grounder))
        await wait_for_shutdown()
    finally:
        if canary is not None and not canary.done():
            canary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await canary
        await broker.stop()
        await grounder.aclose()


def main() -> None:
    configure_logging()
    asyncio.run(serve(Settings()))
