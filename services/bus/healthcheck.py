"""Exit 0 when NATS answers at the URL a service is configured with, 1 when not.

    python -m selfagent.bus.healthcheck planner

The service images run it as their HEALTHCHECK. The URL comes from the named
service's own settings (so ``PLANNER_NATS_URL``, ``NATS_URL`` and their
precedence are read exactly as the service reads them); without a service
name, from ``NATS_URL``. It connects with the service's credentials, so a
refused password is unhealthy too. A URL that lists a cluster's servers is
healthy when any of them answers: the service fails over to that one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from typing import Any

import nats
import nats.errors
from pydantic import ValidationError

from .broker import display_url, server_list, tls_context
from .settings import BusAuth

SERVICES = ("planner", "grounder", "actuator", "gateway", "provisioner")
DEFAULT_URL = "nats://127.0.0.1:4222"


def configured_url(service: str | None) -> str:
    return configured(service)[0]


def configured(service: str | None) -> tuple[str, BusAuth]:
    """The URL and credentials the service reads (without one: the shared ``NATS_*``)."""
    if service is None:
        return os.environ.get("NATS_URL", DEFAULT_URL), BusAuth(
            user=os.environ.get("NATS_USER", ""),
            password=os.environ.get("NATS_PASSWORD", ""),
            ca_file=os.environ.get("NATS_TLS_CA", ""),
        )
    config = importlib.import_module(f"selfagent.{service}.config")
    settings = config.Settings()
    url: str = settings.nats_url
    auth: BusAuth = settings.bus_auth()
    return url, auth


async def check(url: str, timeout: float, auth: BusAuth | None = None) -> None:
    """Connect and make one round trip (PING/PONG) to any of the URL's servers;
    raise the last failure if none answers."""
    failure: Exception | None = None
    for server in server_list(url):
        try:
            await check_one(server, timeout, auth)
        except (OSError, nats.errors.Error) as exc:
            failure = exc
            continue
        return
    assert failure is not None
    raise failure


async def check_one(url: str, timeout: float, auth: BusAuth | None = None) -> None:
    """Connect to this one server and make one round trip; raise if either fails."""

    async def fail_now(exc: Exception) -> None:
        # nats-py reports a failed attempt here and then tries again (with
        # back-off, up to 60 times); a health check wants the first answer.
        raise exc

    # nats-py takes whole seconds for these two.
    seconds = max(1, round(timeout))
    auth = auth or BusAuth()
    options: dict[str, Any] = {}
    if auth.user:
        options.update(user=auth.user, password=auth.password)
    if auth.ca_file:
        options["tls"] = tls_context(auth.ca_file)
    client = await asyncio.wait_for(
        nats.connect(
            url,
            **options,
            name="healthcheck",
            connect_timeout=seconds,
            allow_reconnect=False,
            error_cb=fail_now,
        ),
        timeout,
    )
    try:
        await client.flush(seconds)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfagent.bus.healthcheck")
    parser.add_argument("service", nargs="?", choices=SERVICES, help="whose settings to read")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        url, auth = configured(args.service)
    except ValidationError as exc:
        print(f"unhealthy: the {args.service} settings are invalid: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(check(url, args.timeout, auth))
    except (OSError, nats.errors.Error) as exc:
        reason = str(exc) or type(exc).__name__
        print(f"unhealthy: NATS at {display_url(url)}: {reason}", file=sys.stderr)
        return 1
    print(f"healthy: NATS at {display_url(url)} answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
