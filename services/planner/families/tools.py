"""The generic family: our ``computer`` tool and JSON actions, for any instruction-following model.

This is the planner's original behaviour and the default for model names no
native family claims. The prompt and tool are in ``tools.py``, the reply
reader in ``parsing.py``; this module only arranges the conversation:
instruction, past steps (recent ones with the screenshot they were chosen on,
older ones as text only), then the current screenshot. History is plain text
rather than replayed tool-call structures: that works on every
OpenAI-compatible server, with or without tool support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfagent.llm import ToolCall

from ..parsing import parse_reply
from ..tools import Mode, computer_tool, system_prompt
from .base import ChatMessage, Family, FamilyReply, ParseContext, View


class ToolsFamily(Family):
    name = "tools"
    title = "JSON computer tool"
    sends_tools = True
    correction_text = "Your last reply was not a valid action: {problem}"

    def __init__(self, mode: Mode = "direct", keep_screenshots: int = 3) -> None:
        self.mode = mode
        self.images = keep_screenshots

    def tools(self) -> list[dict[str, Any]] | None:
        return [computer_tool(self.mode)]

    def render(self, view: View) -> list[ChatMessage]:
        messages: list[ChatMessage] = [
            {"role": "system", "content": system_prompt(self.mode, view.width, view.height)},
            {"role": "user", "content": f"Task: {view.task}"},
        ]
        first = self.shown(view.turns)
        for index, past in enumerate(view.turns):
            if index >= first and past.screenshot:
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": f"Screenshot before step {past.step}:"},
                            {"type": "image_url", "image_url": {"url": past.screenshot}},
                        ],
                    }
                )
            messages.append({"role": "assistant", "content": past.reply})
            messages.append({"role": "user", "content": f"Step {past.step} result: {past.outcome}"})
        current = "Current screenshot. Reply with exactly one action."
        if view.feedback:
            current = f"{view.feedback}\n{current}"
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": current},
                    {"type": "image_url", "image_url": {"url": view.screenshot}},
                ],
            }
        )
        return messages

    def read(
        self, content: str | None, tool_calls: Sequence[ToolCall], context: ParseContext
    ) -> FamilyReply:
        parsed = parse_reply(content, tool_calls)
        action_json = parsed.action.model_dump_json(exclude={"id"}, exclude_none=True)
        return FamilyReply(
            actions=(parsed.action,),
            thought=parsed.thought,
            reply=action_json,
            summary=action_json,
        )
