"""Write one JSON Schema file per bus message into ``schemas/json/``.

Run ``python -m selfagent.schemas.export`` after changing a model; a test fails
while the checked-in files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from . import messages
from .actions import Action

JSON_DIR = Path(__file__).parent / "json"

EXPORTED: dict[str, Any] = {
    "TaskSubmitted": messages.TaskSubmitted,
    "ControlCommand": messages.ControlCommand,
    "SessionEvent": messages.SessionEvent,
    "Action": Action,
    "ActRequest": messages.ActRequest,
    "ActionResult": messages.ActionResult,
    "ObserveRequest": messages.ObserveRequest,
    "Observation": messages.Observation,
    "GroundRequest": messages.GroundRequest,
    "GroundResult": messages.GroundResult,
    "ErrorReply": messages.ErrorReply,
    "DeadLetter": messages.DeadLetter,
}


def render() -> dict[str, str]:
    files: dict[str, str] = {}
    for name, model in EXPORTED.items():
        schema = TypeAdapter(model).json_schema()
        schema.setdefault("title", name)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        files[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    rendered = render()
    for stale in JSON_DIR.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (JSON_DIR / name).write_text(text)
    print(f"wrote {len(rendered)} schemas to {JSON_DIR.name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
