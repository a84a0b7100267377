"""The one runner behind every ``python -m selfagent.<service>``.

``run_service(build, Settings)`` configures logging, reads the settings,
builds the service, starts it, waits for SIGINT or SIGTERM (or for the
service to fail by itself), and stops it. A service that cannot start
because of its configuration or its NATS credentials logs one line and
exits with status 2: retrying cannot help, and a traceback would hide the
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from selfagent.errors import BusAuthError, ConfigError

from . import metrics
from .service import Service
from .settings import ServiceSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

EXIT_CANNOT_START = 2
EXIT_FAILED = 1
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_CANCEL_AGAIN_AFTER = 0.5


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_settings(settings_type: type[SettingsT]) -> SettingsT:
    """The settings from the environment and ``.env``; a bad value is a :class:`ConfigError`."""
    try:
        return settings_type()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def run_service(build: Callable[[SettingsT], Service], settings_type: type[SettingsT]) -> int:
    """Run one service until a stop signal; the process exit status."""
    configure_logging()
    # "selfagent.planner" for selfagent.planner.service.build.
    log = logging.getLogger(build.__module__.rpartition(".")[0] or build.__module__)
    try:
        settings = load_settings(settings_type)
        asyncio.run(_serve(build, settings, log))
    except (ConfigError, BusAuthError) as exc:
        log.error("cannot run: %s", exc)
        return EXIT_CANNOT_START
    except Exception:
        log.exception("stopped by an unexpected error")
        return EXIT_FAILED
    return 0


async def _serve(
    build: Callable[[SettingsT], Service], settings: SettingsT, log: logging.Logger
) -> None:
    # Handlers first: a signal while start() still waits for NATS must stop
    # the service cleanly too.
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop_requested.set)
    async with _metrics(build, settings):
        try:
            service = build(settings)
            life = asyncio.create_task(_live(service, log), name="service")
            stopper = asyncio.create_task(stop_requested.wait(), name="stop-signal")
            await asyncio.wait({life, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # From here on a second signal ends the process the default way, for
            # whoever does not want to wait for a graceful stop.
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
        stopper.cancel()
        await _cancel(life, service)
        await service.stop()
    if not life.cancelled():
        # The service ended by itself: re-raise what ended it.
        life.result()
        raise RuntimeError("the service ended by itself")
    log.info("stopped")


def _metrics(
    build: Callable[[SettingsT], Service], settings: SettingsT
) -> contextlib.AbstractAsyncContextManager[int | None]:
    """The service's figures, served on its metrics port while it runs (up to its stop)."""
    # selfagent.planner.service.build: the service is "planner".
    name = build.__module__.split(".")[1] if build.__module__.count(".") >= 2 else ""
    if name not in metrics.SERVICES or not isinstance(settings, ServiceSettings):
        return contextlib.nullcontext(None)
    prefix = settings.model_config.get("env_prefix", "")
    return metrics.serving(
        name, settings.metrics_host, settings.metrics_port, f"{prefix}METRICS_PORT"
    )


async def _cancel(life: asyncio.Task[None], service: Service) -> None:
    """Cancel the service's task and wait until it has ended.

    On Python 3.11, ``asyncio.wait_for`` (nats-py connects through it) loses
    a cancellation that arrives just as the awaited call finishes, and a
    start() waiting for NATS then goes on retrying forever. So the request
    is repeated until start() has seen it (it then stops the service, which
    must not be interrupted) or the task has ended.
    """
    life.cancel()
    while not life.done():
        await asyncio.wait({life}, timeout=_CANCEL_AGAIN_AFTER)
        if not life.done() and not service._stopping:
            life.cancel()


async def _live(service: Service, log: logging.Logger) -> None:
    # The moment from which a stop signal is handled and start() is under
    # way; tests that stop a service mid-start wait for this line.
    log.debug("starting; SIGINT or SIGTERM stops the service")
    await service.start()
    await service.wait()
