"""A chat-completions client that survives real OpenAI-compatible servers.

The SDK's own retries are off (``max_retries=0``): its loop cannot tell a
truncated body from a good one, has no overall deadline and would multiply
with ours. This module owns the whole policy:

* every attempt has an explicit timeout, every call an optional deadline;
* connection errors, timeouts, 408/409/429 and 5xx are retried with
  exponential backoff and jitter; a ``Retry-After`` / ``retry-after-ms``
  header replaces the backoff, capped by :attr:`RetryPolicy.max_retry_after`;
* other 4xx fail at once;
* a body that is not a well-formed chat completion is retried a bounded
  number of times, then reported as ``bad_response``;
* a server that rejects native tool calling (vLLM without
  ``--enable-auto-tool-choice``, llama.cpp without ``--jinja``, Ollama models
  without tool support) is detected once; the client then drops ``tools`` for
  the rest of its life and relies on the system prompt and text parsing.

Always ``stream=False``: some servers drop tool calls from streamed replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletion

from selfagent.bus import metrics
from selfagent.errors import LLMError, LLMReason

__all__ = ["LLMClient", "LLMError", "LLMReason", "LLMReply", "RetryPolicy"]

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of a reply; ``arguments`` is the raw JSON text."""

    name: str
    arguments: str
    id: str | None = None



@dataclass(frozen=True, slots=True)
class LLMReply:
    """One assistant turn: text and/or tool calls, and what it cost."""

    content: str | None
    tool_calls: list[ToolCall]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    model: str = ""
    attempts: int = 1

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try. Delays are in seconds.

    ``max_attempts`` bounds all attempts of one call; ``max_bad_responses``
    bounds those that end in a malformed body (a server that truncates once
    usually truncates again).
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    max_bad_responses: int = 2

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1-based), with "equal jitter"."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


# Fragments of the errors servers return when they cannot do tool calling.
# Matched case-insensitively against the error body of a 400 (or llama.cpp's 500).
_TOOLS_REJECTED = re.compile(
    r"tool[ _-]?choice|enable-auto-tool-choice|tool-call-parser|tools param requires"
    r"|--jinja|unsupported param: tools|does not support tools|tools? (?:are|is) not supported",
    re.IGNORECASE,
)

_RETRYABLE_STATUS = frozenset({408, 409, 429})

# Sampling parameters the chat-completions API names; others go in the body.
_SAMPLING_PARAMETERS = frozenset(
    {"temperature", "max_tokens", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop"}
)


@dataclass
class _Attempts:
    total: int = 0
    bad_responses: int = 0
    last: LLMError | None = field(default=None)


class LLMClient:
    """Resilient ``chat.completions`` calls against one model on one server.

    ``timeout`` is per attempt; ``max_attempts`` overrides the policy's bound.
    ``extra_body`` is merged into every request (server-specific options such
    as ``top_k``). Pass ``client`` to reuse an existing ``AsyncOpenAI`` (its
    own retries should be off). ``sleep`` exists for callers that schedule
    waits themselves.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = 2048,
        extra_body: Mapping[str, Any] | None = None,
        client: openai.AsyncOpenAI | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        settings_prefix: str = "LLM_",
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.model = model
        self.base_url = base_url
        # Which settings an error tells the person to check (LLM_API_BASE_URL...).
        self.settings_prefix = settings_prefix
        self.timeout = timeout
        policy = retry or RetryPolicy()
        if max_attempts is not None:
            if max_attempts < 1:
                raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
            policy = dataclasses.replace(policy, max_attempts=max_attempts)
        self.retry = policy
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self._tools_supported = True
        self._sleep = sleep
        self._owns_client = client is None
        # A local server needs no key, but the SDK insists on a non-empty one.
        self._client = client or openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=timeout
        )

    @property
    def tools_supported(self) -> bool:
        """False once the server has rejected native tool calling; it then stays False."""
        return self._tools_supported

    async def close(self) -> None:
        """Close the HTTP client, if this object created it."""
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        deadline: float | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> LLMReply:
        """One non-streamed chat completion, retried per the policy.

        ``messages`` are chat-completions messages; images go in as
        ``image_url`` parts with ``data:`` URIs. ``tools`` (e.g.
        ``[computer_tool(mode)]``) are sent with ``tool_choice="auto"`` unless
        the server has rejected tool calling before, in which case the call is
        prompt-only and the reply's tool call, if any, is in ``content``.
        ``deadline`` (seconds from now) bounds the whole call, retries and
        waits included; no attempt or wait is started that would overrun it.
        ``sampling`` overrides this client's settings for the one call
        (``temperature``, ``max_tokens``, ``top_p``, ...; a ``None`` value
        leaves the parameter out); keys the API does not name go in the body.

        Raises:
            LLMError: no usable reply; see its ``reason``.
        """
        expires = None if deadline is None else time.monotonic() + deadline
        state = _Attempts()
        while True:
            remaining = None if expires is None else expires - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._give_up(state, "the call's deadline passed")
            state.total += 1
            per_attempt = self.timeout if remaining is None else min(self.timeout, remaining)
            try:
                return await self._attempt(
                    messages, tools, per_attempt, state.total, sampling or {}
                )
            except LLMError as fatal:
                fatal.attempts = state.total
                raise
            except _ToolsRejected as rejected:
                self._tools_supported = False
                log.warning(
                    "LLM server rejected native tool calling (%s); "
                    "continuing in prompt-only mode for this client",
                    rejected,
                )
                # The rejected request never reached the model: not an attempt.
                state.total -= 1
                continue
            except _Retryable as retryable:
                error = retryable.error
                error.attempts = state.total
                state.last = error
                if error.reason == "bad_response":
                    state.bad_responses += 1
                    if state.bad_responses > self.retry.max_bad_responses:
                        raise error from None
                if state.total >= self.retry.max_attempts:
                    raise error from None
                delay = self._delay(retryable.retry_after, state.total)
                remaining = None if expires is None else expires - time.monotonic()
                if remaining is not None and delay >= remaining:
                    raise error from None
                log.info(
                    "LLM attempt %d failed (%s: %s); retrying in %.2fs",
                    state.total,
                    error.reason,
                    error,
                    delay,
                )
                await self._sleep(delay)

    def _give_up(self, state: _Attempts, why: str) -> LLMError:
        if state.last is not None:
            return state.last
        return LLMError("timeout", f"no LLM reply: {why}", attempts=state.total)

    def _delay(self, retry_after: float | None, retry: int) -> float:
        if retry_after is not None:
            # Honour the server, plus a little jitter so replicas do not return
            # in lockstep; the cap protects a step from a hostile header.
            capped = min(retry_after, self.retry.max_retry_after)
            return capped + random.uniform(0, min(0.25, capped * 0.1))
        return self.retry.backoff(retry)

    def _request(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        timeout: float,
        sampling: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "stream": False,
            "timeout": timeout,
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if tools and self._tools_supported:
            request["tools"] = [dict(tool) for tool in tools]
            request["tool_choice"] = "auto"
        extra = dict(self.extra_body)
        for key, value in (sampling or {}).items():
            # A model family's recommended settings, for this call only.
            if key in _SAMPLING_PARAMETERS:
                if value is None:
                    request.pop(key, None)
                else:
                    request[key] = value
            else:
                extra[key] = value
        if extra:
            request["extra_body"] = extra
        return request

    async def _attempt(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        attempt_timeout: float,
        attempt: int,
        sampling: Mapping[str, Any] | None = None,
    ) -> LLMReply:
        request = self._request(messages, tools, attempt_timeout, sampling)
        create = cast(Callable[..., Awaitable[object]], self._client.chat.completions.create)
        try:
            with metrics.model_request():
                completion = await create(**request)
        except openai.APITimeoutError:
            raise _Retryable(
                LLMError("timeout", f"the LLM server did not answer within {attempt_timeout:.1f}s")
            ) from None
        except openai.APIConnectionError as error:
            raise _Retryable(
                LLMError(
                    "connection",
                    f"cannot reach the LLM server at {self.base_url}: {_cause(error)}; "
                    f"check {self.settings_prefix}API_BASE_URL",
                )
            ) from None
        except openai.APIStatusError as error:
            raise self._status_error(error, tools_sent="tools" in request) from None
        except openai.APIResponseValidationError as error:
            raise _Retryable(_bad_response(f"unexpected response shape: {error}")) from None
        except (ValueError, TypeError) as error:
            # The SDK decodes JSON bodies itself and lets a decode error escape.
            raise _Retryable(_bad_response(f"undecodable body: {error}")) from None
        reply = _to_reply(completion)
        metrics.model_tokens(reply.prompt_tokens, reply.completion_tokens)
        return LLMReply(
            content=reply.content,
            tool_calls=reply.tool_calls,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason,
            model=reply.model,
            attempts=attempt,
        )

    def _status_error(self, error: openai.APIStatusError, *, tools_sent: bool) -> Exception:
        status = error.status_code
        detail = _error_detail(error)
        if tools_sent and status in (400, 422, 500) and _TOOLS_REJECTED.search(detail):
            return _ToolsRejected(f"HTTP {status}: {detail}")
        if status == 429:
            return _Retryable(
                LLMError("rate_limited", f"rate limited by the LLM server: {detail}", status=429),
                retry_after=_retry_after(error.response.headers),
            )
        if status >= 500 or status in _RETRYABLE_STATUS:
            reason: LLMReason = "timeout" if status == 408 else "server_error"
            return _Retryable(
                LLMError(reason, f"LLM server error {status}: {detail}", status=status),
                retry_after=_retry_after(error.response.headers),
            )
        hint = {
            401: f"; check {self.settings_prefix}API_KEY",
            403: f"; check {self.settings_prefix}API_KEY",
            404: f"; check {self.settings_prefix}MODEL ({self.model!r}) and "
            f"{self.settings_prefix}API_BASE_URL ({self.base_url})",
        }.get(status, "")
        return LLMError(
            "bad_request",
            f"LLM server refused the request ({status}): {detail}{hint}",
            status=status,
        )


class _Retryable(Exception):
    def __init__(self, error: LLMError, *, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _ToolsRejected(Exception):
    pass


def _bad_response(message: str) -> LLMError:
    return LLMError("bad_response", f"malformed reply from the LLM server: {message}")


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    return f"{error} ({cause})" if cause is not None else str(error)


def _error_detail(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
        if isinstance(body.get("message"), str):
            return str(body["message"])[:500]
        return json.dumps(body)[:500]
    if isinstance(body, str):
        return body[:500]
    return str(error.message)[:500]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``Retry-After``."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    seconds = headers.get("retry-after")
    if seconds is None:
        return None
    try:
        return max(0.0, float(seconds))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(seconds)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _to_reply(completion: object) -> LLMReply:
    """Check by hand what the SDK does not: it builds models without validating."""
    if not isinstance(completion, ChatCompletion):
        kind = type(completion).__name__
        raise _Retryable(_bad_response(f"expected a chat completion, got {kind}"))
    choices = completion.choices
    if not isinstance(choices, list) or not choices:
        raise _Retryable(_bad_response("the completion has no choices"))
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise _Retryable(_bad_response("the first choice has no message"))
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise _Retryable(_bad_response("message content is not text"))
    calls: list[ToolCall] = []
    for raw in getattr(message, "tool_calls", None) or []:
        function = getattr(raw, "function", None)
        name = getattr(function, "name", None)
        if not isinstance(name, str) or not name:
            raise _Retryable(_bad_response("a tool call has no function name"))
        arguments = getattr(function, "arguments", "")
        if not isinstance(arguments, str):
            # Some servers send arguments as an object instead of JSON text.
            arguments = json.dumps(arguments)
        call_id = getattr(raw, "id", None)
        calls.append(ToolCall(name, arguments, call_id if isinstance(call_id, str) else None))
    usage = completion.usage
    prompt_tokens = getattr(usage, "prompt_tokens", 0) if usage is not None else 0
    completion_tokens = getattr(usage, "completion_tokens", 0) if usage is not None else 0
    finish = getattr(choice, "finish_reason", None)
    return LLMReply(
        content=content,
        tool_calls=calls,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else 0,
        completion_tokens=completion_tokens if isinstance(completion_tokens, int) else 0,
        finish_reason=finish if isinstance(finish, str) else None,
        model=completion.model if isinstance(completion.model, str) else "",
    )
