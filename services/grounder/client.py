"""Calling the grounding VLM over the OpenAI chat-completions API.

Retries are ours, not the SDK's (``max_retries=0``): only connection errors,
timeouts, 429 and 5xx are retried, a bounded number of times, honouring
``Retry-After``, and never past the request's overall deadline, so a dead
endpoint costs a caller at most ``deadline`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, cast

import openai
from openai import AsyncOpenAI

from selfagent.bus import SelfagentError
from selfagent.schemas import ErrorCode

from .families import ChatMessage

log = logging.getLogger(__name__)


class VLMError(SelfagentError):
    """The grounding model could not give an answer."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
        backoff: float = 0.5,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.backoff = backoff
        self._client = AsyncOpenAI(
            base_url=base_url,
            # Local servers ignore the key, but the SDK refuses an empty one.
            api_key=api_key or "none",
            timeout=timeout,
            max_retries=0,
        )

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, messages: list[ChatMessage], max_tokens: int) -> str:
        """The assistant's text for ``messages``, or :class:`VLMError`."""
        started = time.monotonic()
        attempt = 0
        while True:
            remaining = self.deadline - (time.monotonic() - started)
            if remaining <= 0:
                raise VLMError(
                    ErrorCode.TIMEOUT,
                    f"grounding model gave no answer within the {self.deadline:.0f}s deadline",
                )
            wait: float | None = None
            try:
                response = await self._client.chat.completions.create(
                    model=self.model,
                    messages=cast(Any, messages),
                    temperature=0.0,
                    max_tokens=max_tokens,
                    stream=False,
                    timeout=min(self.timeout, remaining),
                )
            except openai.APITimeoutError as exc:
                error = VLMError(
                    ErrorCode.TIMEOUT, f"grounding model timed out after {self.timeout:.0f}s"
                )
                cause: Exception = exc
            except openai.APIConnectionError as exc:
                error = VLMError(ErrorCode.LLM_ERROR, f"cannot reach the grounding model: {exc}")
                cause = exc
            except openai.APIStatusError as exc:
                detail = f"grounding model answered HTTP {exc.status_code}: {exc.message}"
                if exc.status_code != 429 and exc.status_code < 500:
                    raise VLMError(ErrorCode.LLM_ERROR, detail) from exc
                error = VLMError(ErrorCode.LLM_ERROR, detail)
                cause = exc
                wait = _retry_after(exc)
            except (openai.OpenAIError, ValueError) as exc:
                # e.g. a body that is not a chat completion: retrying will not help.
                raise VLMError(ErrorCode.LLM_ERROR, f"bad answer from the model: {exc}") from exc
            else:
                return self._text(response)
            attempt += 1
            if attempt > self.retries:
                raise error from cause
            if wait is None:
                wait = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
            remaining = self.deadline - (time.monotonic() - started)
            if wait >= remaining:
                raise error from cause
            log.warning("%s; retry %d/%d in %.2fs", error, attempt, self.retries, wait)
            await asyncio.sleep(wait)

    @staticmethod
    def _text(response: Any) -> str:
        choices = getattr(response, "choices", None)
        if not choices:
            raise VLMError(ErrorCode.LLM_ERROR, "the model's answer has no choices")
        message = choices[0].message
        content = message.content
        if content:
            return str(content)
        # A server with a tool parser may turn the answer into a tool call.
        calls = message.tool_calls or []
        for call in calls:
            function = getattr(call, "function", None)
            if function is not None:
                args = function.arguments or "{}"
                return f'<tool_call>{{"name": "{function.name}", "arguments": {args}}}</tool_call>'
        return ""
