"""LLMClient against the scripted OpenAI-compatible server, over real HTTP."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from selfagent.llm import LLMClient, LLMError, RetryPolicy
from selfagent.planner.parsing import parse_reply
from selfagent.planner.tools import computer_tool
from selfagent.schemas import ClickAction
from tests.harness.fakellm import FakeLLM, tool_call

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You operate a Linux desktop."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Open the terminal."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
]

# Small delays keep the suite fast while still exercising every wait.
FAST = RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.05, max_retry_after=5.0)

VLLM_NO_AUTO_TOOLS = {
    "object": "error",
    "message": '"auto" tool choice requires --enable-auto-tool-choice and '
    "--tool-call-parser to be set",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def make_client(fake: FakeLLM, **overrides: Any) -> LLMClient:
    options: dict[str, Any] = {"timeout": 5.0, "retry": FAST}
    options.update(overrides)
    return LLMClient(base_url=fake.base_url, model="qwen2.5-vl-7b", api_key="k", **options)


async def test_text_reply_reports_usage_and_sends_a_plain_request(fake: FakeLLM) -> None:
    fake.push({"content": 'Opening it.\n{"action": "launch_app", "app": "terminal"}'})
    async with make_client(fake) as client:
        reply = await client.complete(MESSAGES)
    assert reply.content is not None and reply.content.startswith("Opening it.")
    assert reply.tool_calls == []
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (100, 20, 120)
    assert reply.attempts == 1
    sent = fake.requests[0]
    assert sent["stream"] is False
    assert sent["model"] == "qwen2.5-vl-7b"
    assert "tools" not in sent and "tool_choice" not in sent
    # The screenshot travels as the caller built it: a data URI, no `detail`.
    assert sent["messages"][1]["content"][1] == MESSAGES[1]["content"][1]


async def test_native_tool_call_is_returned_and_parses(fake: FakeLLM) -> None:
    fake.push(tool_call("computer", {"action": "click", "x": 412, "y": 230}))
    async with make_client(fake) as client:
        reply = await client.complete(MESSAGES, tools=[computer_tool("direct")])
    assert [call.name for call in reply.tool_calls] == ["computer"]
    assert reply.finish_reason == "tool_calls"
    action = parse_reply(reply.content, reply.tool_calls).action
    assert isinstance(action, ClickAction) and (action.x, action.y) == (412, 230)
    sent = fake.requests[0]
    assert sent["tool_choice"] == "auto"
    assert sent["tools"][0]["function"]["name"] == "computer"


async def test_429_waits_at_least_retry_after(fake: FakeLLM) -> None:
    fake.push(
        {"status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"message": "slow"}}},
        {"content": "ok"},
    )
    async with make_client(fake) as client:
        started = time.monotonic()
        reply = await client.complete(MESSAGES)
        elapsed = time.monotonic() - started
    assert reply.content == "ok" and reply.attempts == 2
    assert 1.0 <= elapsed < 2.5
    assert len(fake.requests) == 2


async def test_retry_after_ms_is_preferred_and_honoured(fake: FakeLLM) -> None:
    fake.push(
        {
            "status": 429,
            "headers": {"retry-after-ms": "400", "Retry-After": "30"},
            "body": {"error": {"message": "slow"}},
        },
        {"content": "ok"},
    )
    async with make_client(fake) as client:
        started = time.monotonic()
        await client.complete(MESSAGES)
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0


async def test_huge_retry_after_is_capped(fake: FakeLLM) -> None:
    fake.push(
        {"status": 429, "headers": {"Retry-After": "3600"}, "body": {"error": {"message": "x"}}},
        {"content": "ok"},
    )
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_retry_after=0.3)
    async with make_client(fake, retry=policy) as client:
        started = time.monotonic()
        reply = await client.complete(MESSAGES)
        elapsed = time.monotonic() - started
    assert reply.content == "ok"
    assert 0.3 <= elapsed < 2.0


async def test_rate_limit_that_outlasts_the_deadline_fails_fast(fake: FakeLLM) -> None:
    fake.default = {
        "status": 429,
        "headers": {"Retry-After": "20"},
        "body": {"error": {"message": "quota"}},
    }
    async with make_client(fake, retry=RetryPolicy(max_retry_after=60)) as client:
        started = time.monotonic()
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES, deadline=2.0)
    assert time.monotonic() - started < 1.5
    assert caught.value.reason == "rate_limited" and caught.value.status == 429
    assert "quota" in str(caught.value)


async def test_rate_limit_exhausts_attempts(fake: FakeLLM) -> None:
    fake.default = {"status": 429, "body": {"error": {"message": "busy"}}}
    async with make_client(fake) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
    assert caught.value.reason == "rate_limited"
    assert caught.value.attempts == 3 and len(fake.requests) == 3


async def test_500_then_success(fake: FakeLLM) -> None:
    fake.push({"status": 500, "body": {"error": {"message": "CUDA out of memory"}}})
    fake.push({"status": 503, "body": {"error": {"message": "loading model"}}})
    fake.push({"content": "recovered"})
    async with make_client(fake) as client:
        reply = await client.complete(MESSAGES)
    assert reply.content == "recovered"
    assert reply.attempts == 3


async def test_persistent_500_is_server_error(fake: FakeLLM) -> None:
    fake.default = {"status": 502, "body": {"error": {"message": "bad gateway"}}}
    async with make_client(fake) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
    assert caught.value.reason == "server_error" and caught.value.status == 502
    assert len(fake.requests) == FAST.max_attempts


async def test_hang_past_timeout_is_retried_then_reported(fake: FakeLLM) -> None:
    fake.default = {"delay": 3.0, "content": "too late"}
    policy = RetryPolicy(max_attempts=2, base_delay=0.02, max_delay=0.05)
    async with make_client(fake, timeout=0.4, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert caught.value.attempts == 2 and len(fake.requests) == 2
    # Two attempts of 0.4 s plus one short backoff, far below the 3 s hang.
    assert 0.8 <= elapsed < 2.0


async def test_deadline_shortens_the_attempt_timeout(fake: FakeLLM) -> None:
    fake.default = {"delay": 3.0, "content": "too late"}
    async with make_client(fake, timeout=30.0) as client:
        started = time.monotonic()
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES, deadline=0.5)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.5


async def test_truncated_body_is_retried(fake: FakeLLM) -> None:
    fake.push({"raw": b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"ind'})
    fake.push({"content": "whole"})
    async with make_client(fake) as client:
        reply = await client.complete(MESSAGES)
    assert reply.content == "whole" and reply.attempts == 2


async def test_truncated_body_every_time_is_bad_response(fake: FakeLLM) -> None:
    fake.default = {"raw": b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "ab'}
    policy = RetryPolicy(max_attempts=10, base_delay=0.01, max_delay=0.02, max_bad_responses=2)
    async with make_client(fake, retry=policy) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
    assert caught.value.reason == "bad_response"
    # One attempt plus max_bad_responses retries, not max_attempts.
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "chatcmpl-1", "object": "chat.completion"}',
        b'{"id": "x", "choices": []}',
        b"[1, 2, 3]",
        b"<html>502 Bad Gateway</html>",
    ],
    ids=["no-choices", "empty-choices", "array", "html"],
)
async def test_bodies_that_are_not_completions_are_bad_responses(
    fake: FakeLLM, body: bytes
) -> None:
    fake.default = {"raw": body}
    async with make_client(fake) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
    assert caught.value.reason == "bad_response"
    assert "malformed reply" in str(caught.value)


async def test_vllm_tool_choice_400_falls_back_to_prompt_only_for_good(
    fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.push({"status": 400, "body": VLLM_NO_AUTO_TOOLS})
    fake.push(
        {
            "content": '<tool_call>\n{"name": "computer", "arguments": '
            '{"action": "key", "keys": "ctrl+alt+t"}}\n</tool_call>'
        }
    )
    fake.push({"content": '{"action": "wait", "seconds": 1}'})
    tools = [computer_tool("grounded")]
    with caplog.at_level(logging.WARNING, logger="selfagent.llm"):
        async with make_client(fake) as client:
            assert client.tools_supported
            first = await client.complete(MESSAGES, tools=tools)
            assert not client.tools_supported
            await client.complete(MESSAGES, tools=tools)
    assert first.attempts == 1
    assert parse_reply(first.content, first.tool_calls).action.action == "key"
    assert "tools" in fake.requests[0] and fake.requests[0]["tool_choice"] == "auto"
    for later in fake.requests[1:]:
        assert "tools" not in later and "tool_choice" not in later
    assert len(fake.requests) == 3
    assert any("prompt-only" in record.getMessage() for record in caplog.records)


async def test_llama_cpp_without_jinja_also_falls_back(fake: FakeLLM) -> None:
    fake.push(
        {
            "status": 500,
            "body": {
                "error": {
                    "code": 500,
                    "message": "tools param requires --jinja flag",
                    "type": "server_error",
                }
            },
        },
        {"content": '{"action": "screenshot"}'},
    )
    async with make_client(fake) as client:
        reply = await client.complete(MESSAGES, tools=[computer_tool("direct")])
        assert not client.tools_supported
    assert reply.content == '{"action": "screenshot"}'
    assert "tools" not in fake.requests[1]


async def test_other_400_fails_at_once_and_keeps_tools(fake: FakeLLM) -> None:
    fake.default = {
        "status": 400,
        "body": {
            "object": "error",
            "message": "This model's maximum context length is 32768 tokens. However, you "
            "requested 40211 tokens.",
            "type": "BadRequestError",
            "code": 400,
        },
    }
    async with make_client(fake) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES, tools=[computer_tool("grounded")])
        assert client.tools_supported
    assert caught.value.reason == "bad_request" and caught.value.status == 400
    assert "maximum context length" in str(caught.value)
    assert len(fake.requests) == 1


async def test_401_is_not_retried(fake: FakeLLM) -> None:
    fake.default = {"status": 401, "body": {"error": {"message": "Incorrect API key provided"}}}
    async with make_client(fake) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
    assert caught.value.reason == "bad_request" and caught.value.status == 401
    assert len(fake.requests) == 1


async def test_a_tool_error_message_without_tools_sent_is_a_plain_400(fake: FakeLLM) -> None:
    fake.default = {"status": 400, "body": VLLM_NO_AUTO_TOOLS}
    async with make_client(fake) as client:
        with pytest.raises(LLMError) as caught:
            await client.complete(MESSAGES)
        # Nothing was offered, so nothing is learnt about tool support.
        assert client.tools_supported
    assert caught.value.reason == "bad_request"
    assert len(fake.requests) == 1


async def test_unreachable_server_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = LLMClient(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=2.0, retry=FAST)
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        await client.complete(MESSAGES)
    await client.close()
    assert caught.value.reason == "connection"
    assert caught.value.attempts == FAST.max_attempts
    assert time.monotonic() - started < 3.0


async def test_missing_usage_counts_as_zero(fake: FakeLLM) -> None:
    fake.push(
        {
            "raw": b'{"id": "c1", "object": "chat.completion", "created": 1, "model": "m", '
            b'"choices": [{"index": 0, "finish_reason": "stop", '
            b'"message": {"role": "assistant", "content": "hi"}}]}'
        }
    )
    async with make_client(fake) as client:
        reply = await client.complete(MESSAGES)
    assert reply.content == "hi"
    assert reply.total_tokens == 0


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout"):
        LLMClient(base_url="http://127.0.0.1:9/v1", model="m", timeout=0)
    with pytest.raises(ValueError, match="max_attempts"):
        LLMClient(base_url="http://127.0.0.1:9/v1", model="m", max_attempts=0)


def test_backoff_grows_and_stays_within_bounds() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)):
        delays = [policy.backoff(retry) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        # Jitter: replicas retrying together must not all pick the same delay.
        assert len(set(delays)) > 1
