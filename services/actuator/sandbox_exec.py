"""Client for the sandbox's authenticated shell/file endpoint (sandbox/exec_server.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from selfagent.errors import FileTooLarge, SandboxExecError, SandboxNotFound


@dataclass
class ShellResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool


class SandboxExec:
    def __init__(self, base_url: str | None, token: str | None, margin: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.token = token
        self.margin = margin
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(30.0, connect=3.0),
        )

    def _url(self, path: str) -> str:
        if not self.base_url or not self.token:
            raise SandboxExecError(
                "this sandbox has no exec endpoint configured "
                "(set ACTUATOR_EXEC_URL and ACTUATOR_EXEC_TOKEN)"
            )
        return self.base_url + path

    async def run(self, command: str, cwd: str | None, timeout: float) -> ShellResult:
        payload: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd:
            payload["cwd"] = cwd
        try:
            response = await self._client.post(
                self._url("/exec"), json=payload, timeout=timeout + self.margin
            )
        except httpx.HTTPError as exc:
            raise SandboxExecError(f"sandbox exec endpoint unreachable: {exc}") from exc
        self._check(response)
        body = response.json()
        return ShellResult(
            exit_code=body.get("exit_code"),
            stdout=body.get("stdout", ""),
            stderr=body.get("stderr", ""),
            timed_out=bool(body.get("timed_out")),
            truncated=bool(body.get("truncated")),
        )

    async def put_file(self, path: str, data: bytes) -> None:
        try:
            response = await self._client.put(
                self._url("/files"), params={"path": path}, content=data
            )
        except httpx.HTTPError as exc:
            raise SandboxExecError(f"sandbox exec endpoint unreachable: {exc}") from exc
        self._check(response)

    async def get_file(self, path: str, limit: int) -> bytes:
        """Download a file, refusing (without reading it all) one over ``limit`` bytes."""
        try:
            async with self._client.stream(
                "GET", self._url("/files"), params={"path": path}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._check(response)
                declared = int(response.headers.get("Content-Length", "0") or 0)
                if declared > limit:
                    raise FileTooLarge(declared, limit)
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    if received > limit:
                        raise FileTooLarge(received, limit)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise SandboxExecError(f"sandbox exec endpoint unreachable: {exc}") from exc

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code == 401:
            raise SandboxExecError("sandbox exec endpoint refused our token (401)")
        if response.status_code == 404:
            raise SandboxNotFound(f"not found in the sandbox: {response.text[:300]}")
        if response.status_code >= 400:
            raise SandboxExecError(
                f"sandbox exec endpoint answered {response.status_code}: {response.text[:300]}"
            )

    async def close(self) -> None:
        await self._client.aclose()
