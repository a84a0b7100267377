"""The JetStream streams, declared identically by whichever service starts first."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable
from typing import TypeVar

from faststream.nats import JStream, NatsBroker
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from selfagent.errors import RequestTimeout
from selfagent.schemas import subjects

from .broker import guard, replicas_of
from .jetstream import jetstream

log = logging.getLogger(__name__)

T = TypeVar("T")

DAY = 24 * 3600
# How long a JetStream API call may take before the server counts as not ready.
API_TIMEOUT = 5.0
# JetStream API error codes (nats-server's errors.json).
STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058

# What the planner's subscriber names; the stream itself is declared from
# STREAM_CONFIGS below, so FastStream must not declare it a second way.
TASKS = JStream(subjects.TASKS_STREAM, subjects=[subjects.TASK_SUBMIT], declare=False)

STREAM_CONFIGS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=subjects.TASKS_STREAM,
        subjects=[subjects.TASK_SUBMIT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=7 * DAY,
    ),
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.SESSION_EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * DAY,
    ),
    StreamConfig(
        name=subjects.CONTROLS_STREAM,
        subjects=[subjects.SESSION_CONTROL_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        max_age=DAY,
    ),
    StreamConfig(
        name=subjects.DEAD_LETTER_STREAM,
        subjects=[subjects.DEAD_LETTER_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * DAY,
    ),
)


async def ensure_streams(broker: NatsBroker, replicas: int | None = None) -> None:
    """Create the streams if missing; an existing stream is left as it is.

    ``replicas``: copies JetStream keeps of each (default: the service's
    ``NATS_REPLICAS``, see :func:`selfagent.bus.broker.replicas_of`); more
    than one needs a cluster of at least that many JetStream servers.
    Only "stream not found" means missing: a refused permission raises
    :class:`BusAuthError` and a JetStream that does not answer raises
    :class:`RequestTimeout`, rather than being mistaken for a missing stream.
    """
    js = jetstream(broker, timeout=API_TIMEOUT)
    copies = replicas_of(broker) if replicas is None else replicas
    for declared in STREAM_CONFIGS:
        assert declared.name is not None
        config = dataclasses.replace(declared, num_replicas=copies)
        existing = await _existing(broker, js, declared.name)
        if existing is not None:
            if (existing.num_replicas or 1) != copies:
                # Changing it is the operator's call (it moves data between
                # servers): say so once at start rather than act silently.
                log.warning(
                    "stream %s has %s replica(s), this service is configured for %s; "
                    "change it with: nats stream edit %s --replicas %s",
                    declared.name,
                    existing.num_replicas or 1,
                    copies,
                    declared.name,
                    copies,
                )
            continue
        subject = f"{DEFAULT_PREFIX}.STREAM.CREATE.{config.name}"
        try:
            await _api(broker, subject, js.add_stream(config))
            log.info("created JetStream stream %s", config.name)
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            # Another service created it (with other settings) between our
            # look-up and our add; the first declaration wins.
            log.debug("stream %s: %s", config.name, exc)


async def _existing(broker: NatsBroker, js: JetStreamContext, name: str) -> StreamConfig | None:
    """The stream's configuration as the server has it; None if there is no such stream."""
    try:
        info = await _api(broker, f"{DEFAULT_PREFIX}.STREAM.INFO.{name}", js.stream_info(name))
    except NotFoundError as exc:
        if exc.err_code != STREAM_NOT_FOUND:
            raise
        return None
    return info.config


async def _api(broker: NatsBroker, subject: str, call: Awaitable[T]) -> T:
    try:
        return await guard(broker, subject, call)
    except NatsTimeoutError as exc:
        raise RequestTimeout(subject, API_TIMEOUT) from exc
