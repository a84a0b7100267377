"""Entry point: ``python -m selfagent.actuator``."""

from __future__ import annotations

import asyncio
import logging
import signal

from selfagent.bus import start_with_retry

from .config import Settings
from .service import build

log = logging.getLogger("selfagent.actuator")


async def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    broker, desktop, _executor, sandbox = build(settings)
    await desktop.start()
    await start_with_retry(broker)
    log.info("actuator for sandbox %r ready", settings.sandbox_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.stop()
    await desktop.stop()
    await sandbox.close()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run())


if __name__ == "__main__":
    main()
