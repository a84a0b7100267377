"""Each step's screenshots, kept in the ``AGENT_SCREENS`` JetStream stream.

One message per image on ``agent.screens.<sid>.<task>.<step>.<before|after>``
(the stream keeps the last per subject). A JetStream object store would split
each image into chunks and read it back through an ordered consumer; a
model-sized JPEG (100-300 KB) fits one message well under the 8 MiB
``max_payload``, so one publish writes it and one "last message for subject"
reads it, and the stream's ``max_age`` and ``max_bytes`` are the retention.
Like every stream it lives on the server's disk and survives restarts.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from faststream.nats import NatsBroker
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from selfagent.schemas import Screenshot, subjects

from .broker import replicas_of
from .jetstream import jetstream
from .streams import API_TIMEOUT, STREAM_NOT_FOUND, _api, _existing

log = logging.getLogger(__name__)

_WIDTH = "Selfagent-Width"
_HEIGHT = "Selfagent-Height"
_MIME = "Content-Type"


@dataclass(frozen=True)
class StoredShot:
    """A kept screenshot: the image's bytes as they were sent, and its type and size."""

    data: bytes
    mime: str
    width: int
    height: int


def config(retention_seconds: float, max_bytes: int, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.SCREENS_STREAM,
        subjects=[subjects.SCREENS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=retention_seconds,
        max_bytes=max_bytes,
        # Full: the oldest screenshots go, never the new step's.
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=1,
        num_replicas=replicas,
    )


async def ensure_stream(broker: NatsBroker, retention_seconds: float, max_bytes: int) -> None:
    """Create the stream, or bring its retention to the setting (the planner owns it)."""
    js = jetstream(broker, timeout=API_TIMEOUT)
    wanted = config(retention_seconds, max_bytes, replicas_of(broker))
    name = subjects.SCREENS_STREAM
    if await _existing(broker, js, name) is None:
        await _api(broker, f"$JS.API.STREAM.CREATE.{name}", js.add_stream(wanted))
        log.info("created JetStream stream %s", name)
        return
    info = await _api(broker, f"$JS.API.STREAM.INFO.{name}", js.stream_info(name))
    current = info.config
    if (current.max_age or 0) != (wanted.max_age or 0) or current.max_bytes != max_bytes:
        updated = StreamConfig.from_response(current.as_dict())
        updated.max_age, updated.max_bytes = wanted.max_age, max_bytes
        await _api(broker, f"$JS.API.STREAM.UPDATE.{name}", js.update_stream(updated))
        log.info("stream %s: retention now %g s, %d bytes", name, retention_seconds, max_bytes)


async def store(
    broker: NatsBroker, session_id: str, task_id: str, step: int, when: str, shot: Screenshot
) -> None:
    await _put(
        broker,
        subjects.screenshot(session_id, task_id, step, when),
        base64.b64decode(shot.data_b64),
        {_MIME: shot.mime, _WIDTH: str(shot.width), _HEIGHT: str(shot.height)},
    )


async def store_model_call(
    broker: NatsBroker, session_id: str, task_id: str, step: int, record: dict[str, Any]
) -> None:
    """The model call a step came from: the messages sent (images as references) and the reply."""
    await _put(
        broker,
        subjects.screenshot(session_id, task_id, step, "model"),
        json.dumps(record).encode(),
        {_MIME: "application/json"},
    )


async def _put(broker: NatsBroker, subject: str, data: bytes, headers: dict[str, str]) -> None:
    await jetstream(broker).publish(
        subject, data, stream=subjects.SCREENS_STREAM, headers=headers
    )


async def fetch(
    broker: NatsBroker, session_id: str, step: int, when: str, task_id: str | None = None
) -> StoredShot | None:
    """A step's screenshot; without ``task_id``, that of the session's newest task with the step."""
    js = jetstream(broker)
    subject = subjects.screenshot(session_id, task_id or "*", step, when)
    try:
        msg = await js.get_last_msg(subjects.SCREENS_STREAM, subject)
    except NotFoundError as exc:
        # No such message, or no stream at all (nothing was ever kept).
        if exc.err_code not in (None, 10037, STREAM_NOT_FOUND):
            raise
        return None
    headers = msg.headers or {}
    return StoredShot(
        data=msg.data or b"",
        mime=headers.get(_MIME, "image/jpeg"),
        width=int(headers.get(_WIDTH, "0")),
        height=int(headers.get(_HEIGHT, "0")),
    )
