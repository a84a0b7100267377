"""The generic family: our ``computer`` tool and JSON actions, for any instruction-following model.

This is the planner's original behaviour and the default for model names no
native family claims. The prompt and tool are in ``tools.py``, the reply
reader in ``parsing.py``; this module only arranges the conversation:
instruction, past steps (recent ones with the screenshot they were chosen on,
older ones as text only), then the current screenshot. History is plain text
rather than replayed tool-call structures: that works on every
OpenAI-compatible server, with or without tool support.

The window of screenshots is built for prefix caches (vLLM's automatic
prefix caching, OpenAI's prompt caching, llama.cpp's prompt cache): with
``append`` (the default) a request repeats the previous one and adds to it,
and old screenshots are dropped in chunks: up to ``max_screenshots`` images,
then back to the two newest. The current screenshot is sent in the same
words it will have as a past step, with the instruction after it, so the
next request's prefix covers it too. About 1.2 new screenshots per step
reach the server instead of 3 (``bench/prefix_cache.py``). ``sliding`` is
the earlier rule (the newest ``keep_screenshots``, one dropped per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from selfagent.llm import ToolCall

from ..parsing import parse_reply
from ..tools import Mode, computer_tool, system_prompt
from .base import ChatMessage, Family, FamilyReply, ParseContext, Turn, View

Window = Literal["append", "sliding"]
# After a drop the previous screenshot stays with the current one: the model
# always sees what its last action changed.
AFTER_DROP = 2


class ToolsFamily(Family):
    name = "tools"
    title = "JSON computer tool"
    sends_tools = True
    correction_text = "Your last reply was not a valid action: {problem}"

    def __init__(
        self,
        mode: Mode = "direct",
        keep_screenshots: int = 3,
        window: Window = "append",
        max_screenshots: int = 6,
    ) -> None:
        self.mode = mode
        self.images = keep_screenshots
        self.window = window
        self.max_images = max(max_screenshots, AFTER_DROP + 1)

    def shown(self, turns: Sequence[Turn]) -> int:
        if self.window == "sliding":
            return super().shown(turns)
        # The first shown turn moves only in chunks of `chunk` turns: between
        # drops every request extends the last one.
        chunk = self.max_images - AFTER_DROP + 1
        return max(0, ((len(turns) - (AFTER_DROP - 1)) // chunk) * chunk)

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
        if self.window == "sliding":
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
        # Exactly as this screenshot will read as a past step, then the ask.
        step = view.turns[-1].step + 1 if view.turns else 1
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Screenshot before step {step}:"},
                    {"type": "image_url", "image_url": {"url": view.screenshot}},
                ],
            }
        )
        messages.append({"role": "user", "content": current})
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
