"""Entry point: ``python -m selfagent.planner``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from selfagent.bus.runtime import configure_logging, wait_for_shutdown

from .canary import run_canary
from .config import Settings
from .families import for_settings
from .service import Planner

log = logging.getLogger("selfagent.planner")


async def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    planner = Planner(settings)
    canary: asyncio.Task[object] | None = None
    try:
        await planner.start()
        if settings.canary:
            # In the background: tasks are served while the model answers it.
            canary = asyncio.create_task(run_canary(settings, planner.llm))
        log.info(
            "planner ready: model %s at %s, %s mode, family %s",
            settings.llm_model,
            settings.llm_api_base_url,
            settings.resolved_mode,
            for_settings(settings).name,
        )
        await wait_for_shutdown()
    finally:
        if canary is not None and not canary.done():
            canary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await canary
        await planner.stop()


def main() -> None:
    configure_logging()
    asyncio.run(run())


if __name__ == "__main__":
    main()
