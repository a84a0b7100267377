"""A native provisioner in the test's own process: real Xvnc + Xfce desktops on the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from selfagent.provisioner.config import Settings
from selfagent.provisioner.service import ProvisionerService


@asynccontextmanager
async def native_provisioner(
    nats_url: str, data: Path, host: str, **settings: Any
) -> AsyncIterator[ProvisionerService]:
    """Started and stopped around the block; ``settings`` override the provisioner's."""
    service = ProvisionerService(
        Settings(
            nats_url=nats_url,
            backend="native",
            host_name=f"{host}-{data.name}",
            data_dir=data,
            # Checked more often than in production (5 s): a check must not disturb
            # a desktop (it once connected to VNC; Xvnc took that for failed logins).
            check_interval=1,
            **settings,
        )
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
