"""Entry point: ``python -m selfagent.provisioner``."""

from __future__ import annotations

import asyncio
import logging

from selfagent.bus.runtime import configure_logging, wait_for_shutdown

from .config import Settings
from .service import build

log = logging.getLogger("selfagent.provisioner")


async def run(settings: Settings | None = None) -> None:
    service = build(settings or Settings())
    error: BaseException | None = None
    try:
        await service.start()
        # A stop signal, or the pool's background work failing for good.
        signal = asyncio.create_task(wait_for_shutdown())
        failure = asyncio.create_task(service.wait())
        done, _ = await asyncio.wait({signal, failure}, return_when=asyncio.FIRST_COMPLETED)
        for task in (signal, failure):
            task.cancel()
        if failure in done and not failure.cancelled():
            error = failure.exception()
    finally:
        await service.stop()
    if error is not None:
        log.error("stopped by an unexpected error: %s", error)
        raise SystemExit(1)


def main() -> None:
    configure_logging()
    asyncio.run(run())


if __name__ == "__main__":
    main()
