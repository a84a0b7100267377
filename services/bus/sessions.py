"""The `agent_sessions` KV bucket of SessionState records: one reader and writer for all."""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from selfagent.schemas import SessionState, subjects

from .broker import replicas_of
from .jetstream import jetstream

log = logging.getLogger(__name__)

# Session state is best effort: a broker hiccup must never stall a task.
TIMEOUT = 2.0


async def ensure_bucket(broker: NatsBroker, replicas: int | None = None) -> None:
    """Create the bucket if missing, with ``replicas`` copies (default: the service's
    ``NATS_REPLICAS``); an existing bucket is left as it is."""
    js = jetstream(broker)
    try:
        await js.key_value(subjects.SESSIONS_BUCKET)
    except BucketNotFoundError:
        # Creating it is idempotent for the same config.
        await js.create_key_value(
            KeyValueConfig(
                bucket=subjects.SESSIONS_BUCKET,
                description="session progress: task, steps, status",
                history=1,
                ttl=7 * 24 * 3600,
                storage=StorageType.FILE,
                replicas=replicas_of(broker) if replicas is None else replicas,
            )
        )


async def open_bucket(broker: NatsBroker) -> KeyValue:
    js = jetstream(broker)
    return await asyncio.wait_for(js.key_value(subjects.SESSIONS_BUCKET), TIMEOUT)


async def read_state(bucket: KeyValue, session_id: str) -> SessionState | None:
    """The session's record; None when there is none (or it cannot be read)."""
    try:
        entry = await asyncio.wait_for(bucket.get(session_id), TIMEOUT)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    try:
        return SessionState.model_validate_json(entry.value)
    except ValueError:
        log.warning("session %s: unreadable state in the KV bucket", session_id)
        return None


async def load_state(broker: NatsBroker, session_id: str) -> SessionState | None:
    try:
        return await read_state(await open_bucket(broker), session_id)
    except (BucketNotFoundError, TimeoutError):
        return None
