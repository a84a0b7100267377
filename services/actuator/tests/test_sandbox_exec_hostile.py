"""The exec endpoint client against a hostile server: real sockets on loopback,
answers crafted to exhaust memory or time. Every length and wait is capped."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from selfagent.actuator.sandbox_exec import (
    MAX_EXEC_RESPONSE,
    MAX_SMALL_RESPONSE,
    MAX_STREAM_CHARS,
    SandboxExec,
)
from selfagent.errors import FileTooLarge, SandboxExecError, SandboxNotFound

Reply = Callable[[asyncio.StreamWriter], Awaitable[None]]


class Hostile:
    """A one-behaviour HTTP server: reads a request, then runs ``reply``."""

    def __init__(self) -> None:
        self.reply: Reply | None = None
        self.sent = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            assert self.reply is not None
            await self.reply(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    found = Hostile()
    found.server = await asyncio.start_server(found._serve, "127.0.0.1", 0)
    yield found
    found.server.close()


def _head(status: str = "200 OK", length: int | None = None, chunked: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _endless_chunks(hostile: Hostile, writer: asyncio.StreamWriter) -> None:
    await hostile.write(writer, _head(chunked=True))
    chunk = b"x" * 65536
    while hostile.sent < 20 * MAX_EXEC_RESPONSE:
        await hostile.write(writer, b"%x\r\n%s\r\n" % (len(chunk), chunk))


async def test_an_endless_exec_reply_is_cut_at_the_cap(hostile: Hostile) -> None:
    hostile.reply = lambda w: _endless_chunks(hostile, w)
    client = SandboxExec(hostile.url, "t")
    try:
        with pytest.raises(SandboxExecError, match="reply of at least"):
            await client.run("true", None, 5)
    finally:
        await client.close()
    # Stopped reading near the cap, not after the server gave up.
    assert hostile.sent < MAX_EXEC_RESPONSE * 3


async def test_a_declared_huge_reply_is_refused_before_reading(hostile: Hostile) -> None:
    async def reply(writer: asyncio.StreamWriter) -> None:
        await hostile.write(writer, _head(length=1 << 40))
        await hostile.write(writer, b"{" * 1000)

    hostile.reply = reply
    client = SandboxExec(hostile.url, "t")
    try:
        with pytest.raises(SandboxExecError, match=str(1 << 40)):
            await client.run("true", None, 5)
        with pytest.raises(FileTooLarge):
            await client.get_file("/x", 1024)
    finally:
        await client.close()


async def test_long_streams_and_odd_fields_are_capped_and_checked(hostile: Hostile) -> None:
    body = {
        "exit_code": 0,
        "stdout": "a" * (MAX_STREAM_CHARS + 5000),
        "stderr": "short",
        "timed_out": "yes",  # not True: not a time-out
        "truncated": False,
    }

    async def reply(writer: asyncio.StreamWriter) -> None:
        data = json.dumps(body).encode()
        await hostile.write(writer, _head(length=len(data)) + data)

    hostile.reply = reply
    client = SandboxExec(hostile.url, "t")
    try:
        result = await client.run("true", None, 5)
        assert len(result.stdout) < MAX_STREAM_CHARS + 100
        assert result.stdout.endswith("[output truncated: 5000 more characters]\n")
        assert result.truncated and not result.timed_out
        assert result.stderr == "short"

        for bad, message in (
            ([1, 2], "JSON object"),
            ({"exit_code": "0"}, "non-integer exit_code"),
            ({"exit_code": True}, "non-integer exit_code"),
            ({"exit_code": 10**30}, "out-of-range"),
            ({"exit_code": 0, "stdout": {"nested": 1}}, "non-string stdout"),
        ):
            body = bad  # type: ignore[assignment]
            with pytest.raises(SandboxExecError, match=message):
                await client.run("true", None, 5)
    finally:
        await client.close()


async def test_invalid_and_deeply_nested_json_is_an_error(hostile: Hostile) -> None:
    payloads = [b"not json", b"[" * 200_000 + b"]" * 200_000, b"\xff\xfe"]

    async def reply(writer: asyncio.StreamWriter) -> None:
        data = payloads.pop(0)
        await hostile.write(writer, _head(length=len(data)) + data)

    hostile.reply = reply
    client = SandboxExec(hostile.url, "t")
    try:
        for _ in range(3):
            with pytest.raises(SandboxExecError, match="invalid JSON"):
                await client.run("true", None, 5)
    finally:
        await client.close()


async def test_a_huge_error_body_becomes_a_short_excerpt(hostile: Hostile) -> None:
    statuses = ["500 Internal Server Error", "404 Not Found"]

    async def reply(writer: asyncio.StreamWriter) -> None:
        await hostile.write(writer, _head(status=statuses.pop(0), chunked=True))
        chunk = b"E" * 65536
        while hostile.sent < 10 * MAX_SMALL_RESPONSE + (1 << 20):
            await hostile.write(writer, b"%x\r\n%s\r\n" % (len(chunk), chunk))

    hostile.reply = reply
    client = SandboxExec(hostile.url, "t")
    try:
        with pytest.raises(SandboxExecError) as failed:
            await client.run("true", None, 5)
        assert "500" in str(failed.value) and len(str(failed.value)) < 400
        hostile.sent = 0
        with pytest.raises(SandboxNotFound) as missing:
            await client.get_file("/x", 1 << 20)
        assert len(str(missing.value)) < 400
    finally:
        await client.close()


async def test_an_undeclared_download_over_the_limit_stops_at_the_limit(hostile: Hostile) -> None:
    hostile.reply = lambda w: _endless_chunks(hostile, w)
    client = SandboxExec(hostile.url, "t")
    try:
        with pytest.raises(FileTooLarge) as refused:
            await client.get_file("/x", 1 << 20)
        assert refused.value.limit == 1 << 20
    finally:
        await client.close()
    assert hostile.sent < 8 << 20


async def test_a_dripping_server_cannot_hold_a_step(hostile: Hostile) -> None:
    async def reply(writer: asyncio.StreamWriter) -> None:
        await hostile.write(writer, _head(chunked=True))
        # One byte a second: every read succeeds well within the read timeout.
        for _ in range(120):
            await hostile.write(writer, b"1\r\n \r\n")
            await asyncio.sleep(1)

    hostile.reply = reply
    client = SandboxExec(hostile.url, "t", margin=1.0, transfer_timeout=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(SandboxExecError, match="did not finish answering within 3s"):
            await client.run("true", None, 2)
        assert time.monotonic() - started < 6
        started = time.monotonic()
        with pytest.raises(SandboxExecError, match="within 2s"):
            await client.get_file("/x", 1 << 20)
        assert time.monotonic() - started < 5
    finally:
        await client.close()


def test_the_caps_fit_what_the_exec_server_sends() -> None:
    # Two default-size streams of the worst JSON escaping still fit the reply cap.
    assert MAX_EXEC_RESPONSE > 2 * 6 * (1024 * 1024)
