"""Entry point: ``python -m selfagent.planner``."""

from __future__ import annotations

import asyncio
import logging

from selfagent.bus.runtime import configure_logging, wait_for_shutdown

from .config import Settings
from .service import Planner

log = logging.getLogger("selfagent.planner")


async def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    planner = Planner(settings)
    try:
        await planner.start()
        log.info(
            "planner ready: model %s at %s, %s mode",
            settings.llm_model,
            settings.llm_api_base_url,
            settings.resolved_mode,
        )
        await wait_for_shutdown()
    finally:
        await planner.stop()


def main() -> None:
    configure_logging()
    asyncio.run(run())


if __name__ == "__main__":
    main()
