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
    try:
        await service.start()
        await wait_for_shutdown()
    finally:
        await service.stop()


def main() -> None:
    configure_logging()
    asyncio.run(run())


if __name__ == "__main__":
    main()
