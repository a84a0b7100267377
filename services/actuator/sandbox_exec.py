"""Client for the sandbox's authenticated shell/file endpoint (sandbox/exec_server.py).

The desktop behind the endpoint runs whatever the agent (or a web page
steering it) made of it, so nothing it answers is trusted: every body is read
as a stream against a byte cap, every request against a total deadline (a
server that drips one byte at a time must not hold a step forever), and every
field of an answer is type-checked and length-capped before it goes on the bus.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx

from selfagent.errors import FileTooLarge, SandboxExecError, SandboxNotFound

# What the exec server keeps of each stream by default is 1 MiB; its JSON can
# grow up to six times that (\u00XX escapes) for two streams, plus the fields.
MAX_EXEC_RESPONSE = 16 * 1024 * 1024
# Each stream as the agent sees it: more than enough for a model's context.
MAX_STREAM_CHARS = 1024 * 1024
# Error and acknowledgement bodies are a short JSON message.
MAX_SMALL_RESPONSE = 64 * 1024
ERROR_EXCERPT = 300
# Uploads and downloads: a whole transfer, however the bytes trickle in.
TRANSFER_TIMEOUT = 300.0


@dataclass
class ShellResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool


def _capped_text(value: object, name: str) -> tuple[str, bool]:
    if value is None:
        return "", False
    if not isinstance(value, str):
        raise SandboxExecError(f"sandbox exec endpoint sent a non-string {name}")
    if len(value) <= MAX_STREAM_CHARS:
        return value, False
    omitted = len(value) - MAX_STREAM_CHARS
    return value[:MAX_STREAM_CHARS] + f"\n[output truncated: {omitted} more characters]\n", True


def _shell_result(body: object) -> ShellResult:
    if not isinstance(body, dict):
        raise SandboxExecError("sandbox exec endpoint answered something other than a JSON object")
    code = body.get("exit_code")
    # bool is an int subclass; a huge int is not an exit code either.
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise SandboxExecError("sandbox exec endpoint sent a non-integer exit_code")
    if code is not None and not -(2**31) <= code < 2**31:
        raise SandboxExecError("sandbox exec endpoint sent an out-of-range exit_code")
    stdout, cut_out = _capped_text(body.get("stdout"), "stdout")
    stderr, cut_err = _capped_text(body.get("stderr"), "stderr")
    return ShellResult(
        exit_code=code,
        stdout=stdout,
        stderr=stderr,
        timed_out=body.get("timed_out") is True,
        truncated=body.get("truncated") is True or cut_out or cut_err,
    )


class SandboxExec:
    def __init__(
        self,
        base_url: str | None,
        token: str | None,
        margin: float = 5.0,
        transfer_timeout: float = TRANSFER_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.token = token
        self.margin = margin
        self.transfer_timeout = transfer_timeout
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(30.0, connect=3.0),
            # The endpoint is on the desktop network; an environment proxy
            # would only be another party to trust.
            trust_env=False,
        )

    def _url(self, path: str) -> str:
        if not self.base_url or not self.token:
            raise SandboxExecError(
                "this sandbox has no exec endpoint configured "
                "(set ACTUATOR_EXEC_URL and ACTUATOR_EXEC_TOKEN)"
            )
        return self.base_url + path

    async def _request(
        self,
        method: str,
        path: str,
        limit: int,
        deadline: float,
        **kwargs: Any,
    ) -> tuple[httpx.Response, bytes]:
        """One request, its body read up to ``limit`` bytes, all within ``deadline`` seconds."""
        url = self._url(path)
        try:
            async with asyncio.timeout(deadline):
                async with self._client.stream(method, url, **kwargs) as response:
                    if response.status_code >= 400:
                        # Only an excerpt is ever shown; the rest is not read.
                        return response, await _read_prefix(response, MAX_SMALL_RESPONSE)
                    return response, await _read_capped(response, limit)
        except TimeoutError:
            raise SandboxExecError(
                f"sandbox exec endpoint did not finish answering within {deadline:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise SandboxExecError(f"sandbox exec endpoint unreachable: {exc}") from exc

    async def run(self, command: str, cwd: str | None, timeout: float) -> ShellResult:
        payload: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd:
            payload["cwd"] = cwd
        deadline = timeout + self.margin
        try:
            response, raw = await self._request(
                "POST", "/exec", MAX_EXEC_RESPONSE, deadline, json=payload, timeout=deadline
            )
        except FileTooLarge as exc:
            raise SandboxExecError(
                f"sandbox exec endpoint sent a reply of at least {exc.size} bytes "
                f"(at most {MAX_EXEC_RESPONSE} are read)"
            ) from None
        self._check(response, raw)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise SandboxExecError(f"sandbox exec endpoint sent invalid JSON: {exc}") from None
        return _shell_result(body)

    async def put_file(self, path: str, data: bytes) -> None:
        try:
            response, raw = await self._request(
                "PUT",
                "/files",
                MAX_SMALL_RESPONSE,
                self.transfer_timeout,
                params={"path": path},
                content=data,
            )
        except FileTooLarge as exc:
            raise SandboxExecError(
                f"sandbox exec endpoint acknowledged an upload with {exc.size}+ bytes"
            ) from None
        self._check(response, raw)

    async def get_file(self, path: str, limit: int) -> bytes:
        """Download a file, refusing (without reading it all) one over ``limit`` bytes."""
        response, raw = await self._request(
            "GET", "/files", limit, self.transfer_timeout, params={"path": path}
        )
        self._check(response, raw)
        return raw

    @staticmethod
    def _check(response: httpx.Response, raw: bytes) -> None:
        if response.status_code < 400:
            return
        text = raw[:ERROR_EXCERPT].decode("utf-8", errors="replace")
        if response.status_code == 401:
            raise SandboxExecError("sandbox exec endpoint refused our token (401)")
        if response.status_code == 404:
            raise SandboxNotFound(f"not found in the sandbox: {text}")
        raise SandboxExecError(f"sandbox exec endpoint answered {response.status_code}: {text}")

    async def close(self) -> None:
        await self._client.aclose()


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, or FileTooLarge as soon as it (declared or received) passes ``limit``."""
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise FileTooLarge(int(declared), limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise FileTooLarge(received, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the connection is dropped with the rest."""
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: limit - received])
        received += len(chunks[-1])
        if received >= limit:
            break
    return b"".join(chunks)
