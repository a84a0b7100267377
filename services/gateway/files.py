"""Files in and out of a session's desktop: upload, download, listing.

The bytes go between the browser and the desktop's exec endpoint
(``sandbox/exec_server.py``) in chunks, never whole in memory and never over
NATS: an upload is spooled by the multipart parser (1 MiB in memory, the rest
on disk) and streamed on, a download is streamed through. Paths are the
desktop user's home and below; the desktop itself refuses ``..`` and links
that lead out (``confine=1``), since only it can see where a link points.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from selfagent.errors import BusError

from .api import SessionId
from .deps import Gateway, GatewayDep

router = APIRouter(tags=["files"])
CHUNK = 1 << 20


class Uploaded(BaseModel):
    path: str
    size: int


class UploadReply(BaseModel):
    files: list[Uploaded]


class Entry(BaseModel):
    path: str
    type: str
    size: int
    mtime: float


class Listing(BaseModel):
    path: str
    entries: list[Entry]
    truncated: bool


async def _exec_endpoint(gateway: Gateway, session_id: str) -> tuple[str, str]:
    """The desktop's exec URL and token: the session's own, or the fixed desktop's."""
    settings = gateway.settings
    if settings.desktops == "fixed":
        token = settings.exec_token.get_secret_value()
        if not settings.exec_url or not token:
            raise HTTPException(
                503, detail="no file access: set GATEWAY_EXEC_URL and GATEWAY_EXEC_TOKEN"
            )
        if not await gateway.catalog.exists(session_id):
            raise HTTPException(404, detail=f"no session {session_id!r}")
        return settings.exec_url.rstrip("/"), token
    try:
        endpoint = await gateway.catalog.endpoint(session_id)
    except BusError as exc:
        raise HTTPException(503, detail=f"cannot look up the desktop: {exc}") from exc
    if endpoint is None or not endpoint.exec_url:
        raise HTTPException(404, detail=f"session {session_id!r} has no desktop")
    return endpoint.exec_url.rstrip("/"), endpoint.exec_token


def _client(token: str, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(timeout, connect=5.0),
    )


async def _raise_for(response: httpx.Response) -> None:
    """The desktop's refusal as the same status, with its reason."""
    if response.status_code < 400:
        return
    await response.aread()
    try:
        reason = str(response.json().get("error") or response.text)
    except ValueError:
        reason = response.text or f"HTTP {response.status_code}"
    status = response.status_code if response.status_code in (400, 403, 404, 413) else 502
    raise HTTPException(status, detail=f"the desktop refused: {reason}")


def _relative(path: str) -> str:
    # What the exec endpoint reads relative to the home; "~/" is the home too.
    return path[2:] if path.startswith("~/") else path


@router.post("/api/sessions/{session_id}/files", response_model=UploadReply, status_code=201)
async def upload(
    session_id: SessionId,
    request: Request,
    gateway: GatewayDep,
    to: Annotated[str, Query(min_length=1, max_length=4096)] = "Uploads",
) -> UploadReply:
    """Multipart upload (field ``files``, one or more) into directory ``to`` of the home."""
    limit = gateway.settings.max_upload_bytes
    declared = int(request.headers.get("content-length") or 0)
    # The multipart frame adds a little; a body far over the limit is refused unread.
    if declared > limit + CHUNK:
        raise HTTPException(413, detail=f"upload of {declared} bytes exceeds {limit}")
    base, token = await _exec_endpoint(gateway, session_id)
    form = await request.form(max_files=100, max_fields=10)
    try:
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if not uploads:
            raise HTTPException(400, detail="no file in the form field 'files'")
        done: list[Uploaded] = []
        async with _client(token, gateway.settings.file_timeout) as client:
            for item in uploads:
                name = posixpath.basename((item.filename or "").replace("\\", "/"))
                if name in ("", ".", ".."):
                    raise HTTPException(400, detail=f"unusable file name {item.filename!r}")
                size = item.size if item.size is not None else 0
                if size > limit:
                    raise HTTPException(413, detail=f"{name}: {size} bytes exceeds {limit}")
                target = posixpath.join(_relative(to), name)
                await item.seek(0)

                async def chunks(upload: UploadFile = item) -> AsyncIterator[bytes]:
                    while chunk := await upload.read(CHUNK):
                        yield chunk

                response = await client.put(
                    f"{base}/files",
                    params={"path": target, "confine": "1"},
                    content=chunks(),
                    headers={"Content-Length": str(size)},
                )
                await _raise_for(response)
                done.append(Uploaded(path=f"~/{target}", size=size))
        return UploadReply(files=done)
    finally:
        await form.close()


@router.get("/api/sessions/{session_id}/files")
async def download(
    session_id: SessionId,
    gateway: GatewayDep,
    path: Annotated[str, Query(min_length=1, max_length=4096)],
) -> StreamingResponse:
    base, token = await _exec_endpoint(gateway, session_id)
    client = _client(token, gateway.settings.file_timeout)
    request = client.build_request(
        "GET", f"{base}/files", params={"path": _relative(path), "confine": "1"}
    )
    try:
        response = await client.send(request, stream=True)
        await _raise_for(response)
    except BaseException:
        await client.aclose()
        raise

    async def close() -> None:
        await response.aclose()
        await client.aclose()

    name = quote(posixpath.basename(path.rstrip("/")) or "download", safe="")
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
        "Content-Length": response.headers.get("content-length", ""),
    }
    return StreamingResponse(
        response.aiter_raw(CHUNK),
        media_type="application/octet-stream",
        headers={k: v for k, v in headers.items() if v},
        background=BackgroundTask(close),
    )


@router.get("/api/sessions/{session_id}/files/list", response_model=Listing)
async def listing(
    session_id: SessionId,
    gateway: GatewayDep,
    path: Annotated[str, Query(max_length=4096)] = "~",
    recursive: bool = False,
) -> Any:
    """A directory of the home (``recursive``: the tree below it, bounded); dotfiles left out."""
    base, token = await _exec_endpoint(gateway, session_id)
    async with _client(token, gateway.settings.file_timeout) as client:
        response = await client.get(
            f"{base}/list",
            params={"path": path or "~", "recursive": "1" if recursive else "0", "confine": "1"},
        )
        await _raise_for(response)
        with contextlib.suppress(ValueError):
            return Listing.model_validate(response.json())
    raise HTTPException(502, detail="the desktop sent an unreadable listing")
