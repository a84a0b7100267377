"""Entry point: ``python -m selfagent.grounder``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from selfagent.bus import start_with_retry

from .canary import run_canary
from .config import Settings
from .service import build

log = logging.getLogger("selfagent.grounder")


async def serve(settings: Settings) -> None:
    broker, grounder = build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
        await stop.wait()
    finally:
        if canary is not None and not canary.done():
            canary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await canary
        await broker.stop()
        await grounder.aclose()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(Settings()))
