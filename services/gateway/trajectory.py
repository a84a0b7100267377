"""A session's trajectory as a zip: ``steps.jsonl`` (schema ``TrajectoryStep``) and the images.

Made from the session's events (``AGENT_EVENTS``) and what the planner kept
of each step (``AGENT_SCREENS``: screenshots and the model call), so it works
for any session still within both retentions, after restarts too. The zip is
written as it is sent: one image at a time is in memory, never the archive.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from selfagent.bus.screens import StoredShot
from selfagent.schemas.export import json_schema
from selfagent.schemas.trajectory import (
    Grounding,
    ModelCall,
    StepImages,
    StepResult,
    StepTimings,
    TrajectoryStep,
)

# (session, step, what, task) -> the kept record, or None.
Fetch = Callable[[str, int, str, str], Awaitable[StoredShot | None]]

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}
# A fixed time in the entries: the same session exports to the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class _Sink:
    """A write-only file for ZipFile; what was written is taken out as it is streamed."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0

    def write(self, data: bytes, /) -> int:
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


@dataclass
class _Step:
    task_id: str
    step: int
    planned: dict[str, Any]
    grounded: dict[str, Any] | None = None
    executed: dict[str, Any] | None = None


@dataclass
class _Session:
    prompts: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    steps: list[_Step] = field(default_factory=list)


def _collect(events: list[dict[str, Any]]) -> _Session:
    session = _Session()
    by_key: dict[tuple[str, int], _Step] = {}
    for event in events:
        kind, task = event.get("kind"), event.get("task_id", "")
        if kind == "task.started":
            session.prompts[task] = event.get("prompt", "")
        elif kind == "task.finished":
            session.statuses[task] = event.get("status", "")
        elif kind == "step.planned":
            step = _Step(task, int(event["step"]), event)
            by_key[(task, step.step)] = step
            session.steps.append(step)
        elif kind in ("step.grounded", "step.executed"):
            found = by_key.get((task, int(event["step"])))
            if found is not None:
                setattr(found, "grounded" if kind == "step.grounded" else "executed", event)
    return session


def _entry(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _ZIP_TIME)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def _refs(value: Any, images: dict[int, str]) -> Any:
    """The planner's ``step://<n>/before`` references as paths of images in the zip."""
    if isinstance(value, str) and value.startswith("step://"):
        number = value.removeprefix("step://").split("/", 1)[0]
        return images.get(int(number), "image://not-kept") if number.isdigit() else value
    if isinstance(value, list):
        return [_refs(item, images) for item in value]
    if isinstance(value, dict):
        return {key: _refs(item, images) for key, item in value.items()}
    return value


async def trajectory_zip(
    session_id: str, events: list[dict[str, Any]], fetch: Fetch
) -> AsyncIterator[bytes]:
    session = _collect(events)
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w")
    lines: list[str] = []
    befores: dict[str, dict[int, str]] = {}
    for step in session.steps:
        paths: dict[str, str] = {}
        for when in ("before", "after"):
            shot = await fetch(session_id, step.step, when, step.task_id)
            if shot is None:
                continue
            extension = _EXTENSIONS.get(shot.mime, "bin")
            path = f"images/{step.task_id}/{step.step:04d}-{when}.{extension}"
            # Images are compressed already.
            archive.writestr(_entry(path, zipfile.ZIP_STORED), shot.data)
            paths[when] = path
            yield sink.take()
        task_images = befores.setdefault(step.task_id, {})
        if "before" in paths:
            task_images[step.step] = paths["before"]
        kept = await _model(fetch, session_id, step)
        lines.append(_line(session_id, step, session, paths, task_images, kept))
    archive.writestr(_entry("steps.jsonl", zipfile.ZIP_DEFLATED), "".join(lines))
    archive.writestr(
        _entry("schema/TrajectoryStep.json", zipfile.ZIP_DEFLATED),
        json.dumps(json_schema("TrajectoryStep"), indent=2, sort_keys=True) + "\n",
    )
    archive.close()
    yield sink.take()


async def _model(fetch: Fetch, session_id: str, step: _Step) -> dict[str, Any] | None:
    # Kept under a reply's first step only: its other steps find none.
    kept = await fetch(session_id, step.step, "model", step.task_id)
    if kept is None:
        return None
    try:
        record: dict[str, Any] = json.loads(kept.data)
    except ValueError:
        return None
    return record


def _line(
    session_id: str,
    step: _Step,
    session: _Session,
    paths: dict[str, str],
    task_images: dict[int, str],
    kept: dict[str, Any] | None,
) -> str:
    planned, executed, grounded = step.planned, step.executed, step.grounded
    tokens = (planned.get("prompt_tokens", 0), planned.get("completion_tokens", 0))
    model: ModelCall | None = None
    if kept is not None or any(tokens):
        model = ModelCall(
            messages=_refs(kept.get("messages"), task_images) if kept else None,
            reply=kept.get("reply") if kept else None,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            model_ms=planned.get("model_ms", 0.0),
        )
    line = TrajectoryStep(
        session_id=session_id,
        task_id=step.task_id,
        step=step.step,
        instruction=session.prompts.get(step.task_id, ""),
        model=model,
        thought=planned.get("thought", ""),
        action=planned["action"],
        executed=executed["action"] if executed and executed.get("ok") else None,
        grounding=Grounding(**{k: grounded[k] for k in ("target", "x", "y", "method")})
        if grounded
        else None,
        result=StepResult(
            ok=executed["ok"], error=executed.get("error"), output=executed.get("output")
        )
        if executed
        else None,
        timings=StepTimings(
            model_ms=planned.get("model_ms", 0.0),
            settle_ms=executed.get("settle_ms", 0.0) if executed else 0.0,
            duration_ms=executed.get("duration_ms", 0.0) if executed else 0.0,
        ),
        images=StepImages(before=paths.get("before"), after=paths.get("after")),
        planned_at=datetime.fromisoformat(planned["at"]),
        task_status=session.statuses.get(step.task_id),
    )
    return line.model_dump_json() + "\n"
