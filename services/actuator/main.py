"""Entry point: ``python -m selfagent.actuator``."""

from __future__ import annotations

import asyncio
import logging

from selfagent.bus import start_with_retry
from selfagent.bus.runtime import configure_logging, wait_for_shutdown

from .config import Settings
from .service import build

log = logging.getLogger("selfagent.actuator")


async def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    broker, desktop, _executor, sandbox = build(settings)
    await desktop.start()
    try:
        await start_with_retry(broker)
        log.info("actuator for sandbox %r ready", settings.sandbox_id)
        await wait_for_shutdown()
    finally:
        await broker.stop()
        await desktop.stop()
        await sandbox.close()


def main() -> None:
    configure_logging()
    asyncio.run(run())


if __name__ == "__main__":
    main()
