"""The desktop a backend drives: one interface, one implementation per platform.

``VncDesktop`` is the implementation for sandboxes reached over VNC; another
platform (e.g. a local X display through XTest) would be another class with
the same methods, and the executor would not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from abc import ABC, abstractmethod

from PIL import Image

from selfagent.errors import DesktopUnavailable, RFBError
from selfagent.rfb import BUTTON_BITS, WHEEL_BITS, RFBClient
from selfagent.schemas import ImageFormat

from .keys import char_keysym

log = logging.getLogger(__name__)


class Desktop(ABC):
    @property
    @abstractmethod
    def size(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def cursor(self) -> tuple[int, int]: ...

    @abstractmethod
    async def move(self, x: int, y: int) -> None: ...

    @abstractmethod
    async def button(self, x: int, y: int, button: str, down: bool) -> None: ...

    @abstractmethod
    async def wheel(self, x: int, y: int, direction: str, notches: int) -> None: ...

    @abstractmethod
    async def key(self, keysym: int, down: bool) -> None: ...

    @abstractmethod
    async def type_text(self, text: str, chunk: int) -> None: ...

    @abstractmethod
    def screenshot(
        self, fmt: ImageFormat, quality: int, max_size: tuple[int | None, int | None]
    ) -> tuple[bytes, int, int]: ...

    @abstractmethod
    async def settle(self, since: float, quiet: float, maximum: float, expect: float) -> float: ...


class VncDesktop(Desktop):
    """A sandbox desktop over one long-lived VNC connection that heals itself."""

    def __init__(
        self,
        host: str,
        port: int,
        password: str | None,
        *,
        connect_timeout: float = 5.0,
        retry_interval: float = 0.5,
        wait_for_link: float = 2.0,
    ) -> None:
        self.host, self.port, self.password = host, port, password
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self.wait_for_link = wait_for_link
        self._client: RFBClient | None = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._cursor = (0, 0)
        self.last_error: str | None = None

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="vnc-supervisor")

    async def stop(self) -> None:
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._client:
            await self._client.close()

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _supervise(self) -> None:
        while True:
            client = RFBClient(self.host, self.port, self.password)
            try:
                await client.connect(self.connect_timeout)
            except Exception as exc:
                # Whatever went wrong (a refused port, a bad password, a
                # server speaking nonsense), keep trying: the supervisor is
                # what brings the link back, so it must never end.
                await client.close()
                if self.last_error != str(exc):
                    log.warning("VNC: %s (retrying every %.1fs)", exc, self.retry_interval)
                self.last_error = str(exc)
                await asyncio.sleep(self.retry_interval)
                continue
            log.info(
                "VNC connected to %s:%d (%dx%d)", self.host, self.port, client.width, client.height
            )
            self.last_error = None
            self._client = client
            self._ready.set()
            await client.closed.wait()
            self._ready.clear()
            self.last_error = "VNC connection lost"
            await client.close()
            await asyncio.sleep(self.retry_interval)

    async def _link(self) -> RFBClient:
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.wait_for_link)
            except TimeoutError as exc:
                raise DesktopUnavailable(
                    f"VNC server {self.host}:{self.port} is unreachable: {self.last_error}"
                ) from exc
        assert self._client is not None
        return self._client

    def _current(self) -> RFBClient:
        if not self._ready.is_set() or self._client is None:
            raise DesktopUnavailable(
                f"VNC server {self.host}:{self.port} is unreachable: {self.last_error}"
            )
        return self._client

    async def _send(self, fn: str, *args: int | bool) -> None:
        client = await self._link()
        try:
            getattr(client, fn)(*args)
            await client.flush()
        except RFBError as exc:
            raise DesktopUnavailable(str(exc)) from exc

    @property
    def size(self) -> tuple[int, int]:
        client = self._current()
        return client.width, client.height

    async def current_size(self) -> tuple[int, int]:
        client = await self._link()
        return client.width, client.height

    @property
    def cursor(self) -> tuple[int, int]:
        return self._cursor

    async def move(self, x: int, y: int) -> None:
        self._cursor = (x, y)
        await self._send("pointer", x, y, 0)

    async def button(self, x: int, y: int, button: str, down: bool) -> None:
        self._cursor = (x, y)
        await self._send("pointer", x, y, BUTTON_BITS[button] if down else 0)

    async def drag_to(self, x: int, y: int, button: str) -> None:
        self._cursor = (x, y)
        await self._send("pointer", x, y, BUTTON_BITS[button])

    async def wheel(self, x: int, y: int, direction: str, notches: int) -> None:
        client = await self._link()
        self._cursor = (x, y)
        try:
            client.pointer(x, y, 0)
            for _ in range(notches):
                client.pointer(x, y, WHEEL_BITS[direction])
                client.pointer(x, y, 0)
            await client.flush()
        except RFBError as exc:
            raise DesktopUnavailable(str(exc)) from exc

    async def key(self, keysym: int, down: bool) -> None:
        await self._send("key", keysym, down)

    async def type_text(self, text: str, chunk: int) -> None:
        client = await self._link()
        try:
            for start in range(0, len(text), chunk):
                for char in text[start : start + chunk]:
                    sym = char_keysym(char)
                    client.key(sym, True)
                    client.key(sym, False)
                # Drain per chunk so a long text neither floods the server's
                # input queue nor holds the loop for the whole string.
                await client.flush()
        except RFBError as exc:
            raise DesktopUnavailable(str(exc)) from exc

    def screenshot(
        self, fmt: ImageFormat, quality: int, max_size: tuple[int | None, int | None]
    ) -> tuple[bytes, int, int]:
        client = self._current()
        image = Image.frombuffer(
            "RGB", (client.width, client.height), client.framebuffer, "raw", "BGRX", 0, 1
        )
        max_w, max_h = max_size
        scale = min(
            (max_w / image.width) if max_w else 1.0, (max_h / image.height) if max_h else 1.0
        )
        if scale < 1.0:
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                Image.Resampling.BILINEAR,
            )
        buffer = io.BytesIO()
        if fmt == "png":
            # compress_level 1: PNG at level 6 costs ~40 ms at 720p for ~10% size.
            image.save(buffer, "PNG", compress_level=1)
        else:
            image.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue(), image.width, image.height

    async def settle(self, since: float, quiet: float, maximum: float, expect: float) -> float:
        """Wait until no framebuffer change for ``quiet`` s; return seconds waited.

        With ``expect`` > 0, first wait up to that long for a change to begin
        (a launched window takes a while to map); if none comes, the action
        changed nothing visible and we stop there.
        """
        client = await self._link()
        start = time.monotonic()
        deadline = since + maximum
        if expect > 0 and client.last_change <= since:
            while client.last_change <= since and time.monotonic() < min(deadline, since + expect):
                client.changed.clear()
                remaining = min(deadline, since + expect) - time.monotonic()
                try:
                    await asyncio.wait_for(client.changed.wait(), max(remaining, 0.001))
                except TimeoutError:
                    break
                if client.closed.is_set():
                    raise DesktopUnavailable("VNC connection lost while settling")
        while True:
            now = time.monotonic()
            quiet_until = max(client.last_change, since) + quiet
            if now >= quiet_until or now >= deadline:
                break
            client.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.changed.wait(), min(quiet_until, deadline) - now)
            if client.closed.is_set():
                raise DesktopUnavailable("VNC connection lost while settling")
        return time.monotonic() - start
