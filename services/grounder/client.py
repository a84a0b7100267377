"""Calling the grounding VLM: the shared chat-completions client, read as text.

Retries, timeouts, ``Retry-After`` and the overall deadline are the shared
client's (:mod:`selfagent.llm`); this adapter bounds every request by the
grounder's deadline and turns failures into the error codes grounding
replies carry.
"""

from __future__ import annotations

from selfagent.errors import VLMError
from selfagent.llm import LLMClient, LLMError
from selfagent.schemas import ErrorCode

from .families import ChatMessage


class VLMClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        *,
        timeout: float,
        retries: int,
        deadline: float,
        max_tokens: int,
    ) -> None:
        self.deadline = deadline
        self._llm = LLMClient(
            base_url=base_url,
            model=model,
            api_key=api_key or None,
            timeout=timeout,
            max_attempts=retries + 1,
            temperature=0.0,
            max_tokens=max_tokens,
            settings_prefix="GROUNDER_",
        )

    async def close(self) -> None:
        await self._llm.close()

    async def complete(self, messages: list[ChatMessage]) -> str:
        """The assistant's text for ``messages``, or :class:`VLMError`."""
        try:
            reply = await self._llm.complete(messages, deadline=self.deadline)
        except LLMError as exc:
            code = ErrorCode.TIMEOUT if exc.reason == "timeout" else ErrorCode.LLM_ERROR
            raise VLMError(code, f"grounding model: {exc}") from exc
        if reply.content:
            return reply.content
        # A server with a tool parser may turn the answer into a tool call;
        # the families parse the <tool_call> text form.
        for call in reply.tool_calls:
            arguments = call.arguments or "{}"
            return f'<tool_call>{{"name": "{call.name}", "arguments": {arguments}}}</tool_call>'
        return ""
