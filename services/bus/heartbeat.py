"""Heartbeats: a replica says, every interval, that it lives and what it holds.

Actuators, grounders and planners each publish one; whoever waits on a
replica's work (a planner on an action or a grounding, a planner on a peer's
tasks) takes a few missed beats for its death instead of waiting out a long
timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from faststream.nats import NatsBroker
from pydantic import BaseModel

log = logging.getLogger(__name__)


async def send_beat(broker: NatsBroker, subject: str, beat: BaseModel) -> None:
    """Publish one beat; a beat lost while the bus is away is not worth an error."""
    try:
        await broker.publish(beat, subject)
    except Exception as exc:
        log.debug("heartbeat not sent: %s", exc)


async def beat_forever(
    broker: NatsBroker,
    subject: str,
    beat: Callable[[], BaseModel],
    interval: float,
    after_each: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Send ``beat()`` every ``interval`` seconds (then run ``after_each``) until cancelled."""
    while True:
        await send_beat(broker, subject, beat())
        if after_each is not None:
            await after_each()
        await asyncio.sleep(interval)
