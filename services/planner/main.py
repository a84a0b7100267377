"""Entry point: ``python -m selfagent.planner``."""

from __future__ import annotations

import asyncio
import logging
import signal

from .config import Settings
from .service import Planner

log = logging.getLogger("selfagent.planner")


async def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    planner = Planner(settings)
    await planner.start()
    log.info(
        "planner ready: model %s at %s, %s mode",
        settings.llm_model,
        settings.llm_api_base_url,
        settings.resolved_mode,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await planner.stop()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run())


if __name__ == "__main__":
    main()
