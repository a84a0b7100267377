"""A minimal service for the runner's tests: ``PROBE_FAIL`` says how its start goes.

Run as a script (``python runner_probe.py``), exactly as ``python -m
selfagent.<service>`` runs a real one. Prints ``released`` when ``stop()``
releases what it registered, and ``ready`` once started.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from pydantic_settings import SettingsConfigDict

from selfagent.bus import Service, ServiceSettings
from selfagent.bus.runtime import run_service
from selfagent.errors import BusAuthError, ConfigError


class ProbeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROBE_")

    fail: str = ""


class Probe(Service):
    def __init__(self, settings: ProbeSettings) -> None:
        super().__init__()
        self.settings = settings
        self.resources.callback(print, "released", flush=True)

    async def _start(self) -> None:
        match self.settings.fail:
            case "auth":
                raise BusAuthError("nats: authorization violation")
            case "config":
                raise ConfigError("PROBE_SOMETHING must be set")
            case "bug":
                raise ZeroDivisionError("a bug")
            case "auth-later":
                self.spawn(self._refused_later(), name="connect", errors_are_fatal=True)
            case "deaf":
                await self._loses_a_cancellation()
        print("ready", flush=True)

    async def _loses_a_cancellation(self) -> None:
        # What asyncio.wait_for on Python 3.11 can do to a connect that is
        # retried (nats-py's): the cancellation is lost and the wait goes on.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    async def _refused_later(self) -> None:
        # "Later" is the point: after start() has returned and the service runs.
        await asyncio.sleep(0.1)
        raise BusAuthError("nats: authorization violation")


def build(settings: ProbeSettings) -> Probe:
    return Probe(settings)


if __name__ == "__main__":
    sys.exit(run_service(build, ProbeSettings))
