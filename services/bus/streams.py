"""The JetStream streams, declared identically by whichever service starts first."""

from __future__ import annotations

import logging

from faststream.nats import JStream, NatsBroker
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from selfagent.schemas import subjects

from .jetstream import jetstream

log = logging.getLogger(__name__)

DAY = 24 * 3600

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


async def ensure_streams(broker: NatsBroker) -> None:
    """Create the streams if missing; an existing stream is left as it is."""
    js = jetstream(broker)
    for config in STREAM_CONFIGS:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
            continue
        except Exception:
            pass
        try:
            await js.add_stream(config)
            log.info("created JetStream stream %s", config.name)
        except BadRequestError as exc:
            # Another service created it between our check and our add.
            log.debug("stream %s: %s", config.name, exc)
