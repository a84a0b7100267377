"""A filtering Docker API proxy: ``python -m selfagent.provisioner.socket_proxy``.

Whoever holds the Docker socket controls the host (one privileged container
with ``/`` bound in is enough). The provisioner must create containers, so
in compose it does not get the socket: it gets this proxy, on a network only
the two of them join, and the proxy lets through only what
``docker_backend.py`` needs, on selfagent's own objects:

- ``_ping``, ``version``, ``info`` (reduced to the engine's name and
  version), the inspect of the sandbox image and of the desktop network;
- creating a container only from the sandbox image, with the
  ``selfagent.sandbox=1`` label, on the desktop network alone, with
  ``no-new-privileges``, and none of: privileged, added capabilities,
  devices, host namespaces, published ports, host paths (only named
  ``selfagent-home-*`` volumes), a root user, another logging driver;
- inspect, start, stop, kill, wait, rename, logs (not followed) and remove
  of a container that carries that label (looked up first, then addressed
  by its id), and listing, filtered to that label;
- creating, listing (filtered), inspecting and removing ``selfagent-home-*``
  volumes labelled ``selfagent.home=1``, with the local driver and no
  driver options (which could bind a host path).

Everything else gets HTTP 403 with a JSON message that says why; streaming
and hijacked calls (attach, exec, events, a followed log) among them, so a
request either fits in the size bounds or is refused. Bodies are parsed and
forwarded re-serialised, so the engine sees exactly what was checked; keys
are matched exactly, and a key that the engine would read as another one
(Go's JSON decoding ignores case) is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from selfagent.errors import DockerProxyError, DockerRequestRefused

from .backend import LABEL_HOME, LABEL_SANDBOX

log = logging.getLogger(__name__)

HOME_NAME = re.compile(r"^selfagent-home-[A-Za-z0-9_.-]{1,200}$")
CONTAINER_NAME = re.compile(r"^/?selfagent-sandbox-[A-Za-z0-9_.-]{1,200}$")
# A container's or volume's name or id as a path segment (no escapes, no dots alone).
OBJECT_REF = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"
VERSION_PREFIX = re.compile(r"^/v[0-9]{1,2}\.[0-9]{1,3}(?=/)")
SAFE_PATH = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,1024}$")
MAX_HEAD_LINE = 8192
MAX_HEADERS = 64

# Headers that describe one hop; the proxy sets its own.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCKER_PROXY_", extra="ignore")

    # Inside compose the proxy is reachable only on its private network.
    listen_host: str = "0.0.0.0"
    port: int = Field(default=2375, ge=1, le=65535)
    socket: Path = Path("/var/run/docker.sock")
    # The one image sandboxes may be created from, and their one network.
    image: str = "selfagent/sandbox:latest"
    network: str = Field(default="selfagent-desktop", min_length=1)
    max_body: int = Field(default=256 * 1024, ge=1024)
    max_response: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    # A whole call to the engine; `stop` waits for the container's grace period.
    request_timeout: float = Field(default=120.0, gt=0)
    # An idle keep-alive connection is closed after this.
    idle_timeout: float = Field(default=60.0, gt=0)


# -- HTTP/1.1, the little of it Docker's API uses ------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    @property
    def split(self) -> tuple[str, str, str]:
        """(version prefix, path without it, query string)."""
        parts = urlsplit(self.target)
        match = VERSION_PREFIX.match(parts.path)
        prefix = match.group(0) if match else ""
        return prefix, parts.path[len(prefix) :], parts.query


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def encode(self, keep_alive: bool, head_only: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in HOP_HEADERS]
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def json_response(status: int, reason: str, payload: object) -> Response:
    return Response(
        status, reason, [("Content-Type", "application/json")], json.dumps(payload).encode()
    )


def refused(message: str) -> Response:
    # Docker's own error shape: clients show `message`.
    return json_response(403, "Forbidden", {"message": f"selfagent docker proxy: {message}"})


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise DockerProxyError(431, "header line too long") from exc
    if len(line) > MAX_HEAD_LINE:
        raise DockerProxyError(431, "header line too long")
    return line.rstrip(b"\r\n")


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    start = (await _read_line(reader)).decode("latin-1")
    headers: dict[str, str] = {}
    while True:
        line = (await _read_line(reader)).decode("latin-1")
        if not line:
            return start, headers
        if len(headers) >= MAX_HEADERS:
            raise DockerProxyError(431, "too many headers")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise DockerProxyError(400, "malformed header")
        key = name.lower()
        if key in headers and key in ("content-length", "transfer-encoding", "host"):
            raise DockerProxyError(400, f"repeated {name} header")
        headers[key] = value.strip()


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_line = (await _read_line(reader)).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as exc:
            raise DockerProxyError(502, "malformed chunk size") from exc
        if size == 0:
            # Trailers, then the empty line.
            while await _read_line(reader):
                pass
            return bytes(body)
        if len(body) + size > limit:
            raise DockerProxyError(502, f"response larger than {limit} bytes")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_request(reader: asyncio.StreamReader, max_body: int) -> Request | None:
    """The next request on a connection; None when the client closed it."""
    try:
        start, headers = await _read_head(reader)
    except asyncio.IncompleteReadError:
        return None
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise DockerProxyError(400, "malformed request line")
    method, target, version = parts
    if "transfer-encoding" in headers:
        # The Docker clients send bodies with a length; not knowing it up
        # front would mean an unbounded read.
        raise DockerProxyError(411, "a request body needs a Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise DockerProxyError(400, "malformed Content-Length")
    length = int(length_text)
    if length > max_body:
        raise DockerProxyError(413, f"request body over {max_body} bytes")
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method.upper(), target, headers, body, keep_alive)


class Upstream:
    """The engine on its Unix socket, one connection per call (no hijacking, no reuse)."""

    def __init__(self, path: Path, *, max_response: int, timeout: float) -> None:
        self.path = path
        self.max_response = max_response
        self.timeout = timeout

    async def call(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        return await asyncio.wait_for(self._call(method, target, body, content_type), self.timeout)

    async def _call(
        self, method: str, target: str, body: bytes, content_type: str | None
    ) -> Response:
        reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_HEAD_LINE * 2)
        try:
            lines = [f"{method} {target} HTTP/1.1", "Host: docker", "Connection: close"]
            if content_type:
                lines.append(f"Content-Type: {content_type}")
            if body or method in ("POST", "PUT"):
                lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            start, headers = await _read_head(reader)
            version, _, rest = start.partition(" ")
            status_text, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not status_text.isdigit():
                raise DockerProxyError(502, f"the engine answered {start[:80]!r}")
            status = int(status_text)
            if status == 101:
                raise DockerProxyError(502, "the engine switched protocols")
            if method == "HEAD" or status in (204, 304):
                payload = b""
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                payload = await _read_chunked(reader, self.max_response)
            elif "content-length" in headers:
                length = int(headers["content-length"])
                if length > self.max_response:
                    raise DockerProxyError(502, f"response larger than {self.max_response} bytes")
                payload = await reader.readexactly(length)
            else:
                payload = await reader.read(self.max_response + 1)
                if len(payload) > self.max_response:
                    raise DockerProxyError(502, f"response larger than {self.max_response} bytes")
            kept = [(k, v) for k, v in headers.items() if k not in HOP_HEADERS]
            return Response(status, reason or "OK", kept, payload)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# -- the policy ---------------------------------------------------------------------


def _zero(value: object) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Go decodes JSON keys case-insensitively (with Unicode folding), so
    # "privileged" would set Privileged; two keys that fold alike, or a key
    # that is not plain ASCII, could make the engine read what was not checked.
    seen: set[str] = set()
    for key, _ in pairs:
        if not key.isascii():
            raise DockerRequestRefused(f"non-ASCII key {key!r} in the request body")
        folded = key.lower()
        if folded in seen:
            raise DockerRequestRefused(f"key {key!r} given twice (keys are case-insensitive)")
        seen.add(folded)
    return dict(pairs)


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}", object_pairs_hook=_strict_object)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DockerRequestRefused(f"the request body is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise DockerRequestRefused("the request body is not a JSON object")
    return parsed


def _only(
    where: str,
    obj: dict[str, Any],
    checks: dict[str, Callable[[Any], str | None]],
    free: frozenset[str] = frozenset(),
) -> None:
    """Each key is free, checked, or must be zero; a check returns why it refuses."""
    known = {k.lower(): k for k in (*checks, *free)}
    for key, value in obj.items():
        exact = known.get(key.lower())
        if exact is not None and exact != key:
            raise DockerRequestRefused(f"{where}.{key}: write it as {exact}")
        if key in free:
            continue
        check = checks.get(key)
        if check is None:
            if not _zero(value):
                raise DockerRequestRefused(f"{where}.{key} is not allowed")
            continue
        problem = check(value)
        if problem:
            raise DockerRequestRefused(f"{where}.{key}: {problem}")
    for key, check in checks.items():
        if key not in obj:
            problem = check(None)
            if problem:
                raise DockerRequestRefused(f"{where}.{key}: {problem}")


def _must_be_zero(value: Any) -> str | None:
    return None if _zero(value) else "not allowed"


def _is_root(user: str) -> bool:
    name, _, group = user.partition(":")
    return name in ("root", "0") or group in ("root", "0")


@dataclass(frozen=True)
class Policy:
    image: str
    network: str

    # -- container create ---------------------------------------------------------

    def check_create(self, query: dict[str, list[str]], body: dict[str, Any]) -> None:
        names = query.get("name", [])
        if len(names) != 1 or not CONTAINER_NAME.match(names[0]):
            raise DockerRequestRefused("a container is created with a selfagent-sandbox-* name")
        unknown = set(query) - {"name", "platform"}
        if unknown:
            raise DockerRequestRefused(f"query parameters {sorted(unknown)} are not allowed")
        free = frozenset(
            {
                "Hostname",
                "Domainname",
                "Env",
                "Cmd",
                "Entrypoint",
                "WorkingDir",
                "StopSignal",
                "StopTimeout",
                "Healthcheck",
                "ExposedPorts",
                "Tty",
                "OpenStdin",
                "StdinOnce",
                "AttachStdin",
                "AttachStdout",
                "AttachStderr",
                "NetworkDisabled",
                # Mount points: anonymous volumes, or where a checked bind goes.
                "Volumes",
            }
        )
        checks: dict[str, Callable[[Any], str | None]] = {
            "Image": self._image,
            "Labels": self._sandbox_labels,
            "User": self._user,
            "HostConfig": self._host_config,
            "NetworkingConfig": self._networking,
        }
        _only("body", body, checks, free)

    def _image(self, value: Any) -> str | None:
        return None if value == self.image else f"only {self.image} may be run"

    @staticmethod
    def _sandbox_labels(value: Any) -> str | None:
        if not isinstance(value, dict) or value.get(LABEL_SANDBOX) != "1":
            return f"the {LABEL_SANDBOX}=1 label is required"
        return None

    @staticmethod
    def _user(value: Any) -> str | None:
        if value is None or value == "":
            return None  # the image's own user: `agent`
        if not isinstance(value, str) or _is_root(value):
            return "a sandbox never runs as root"
        return None

    def _host_config(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return "required"

        def network_mode(mode: Any) -> str | None:
            return None if mode == self.network else f"only the network {self.network}"

        def one_of(*allowed: str) -> Callable[[Any], str | None]:
            def check(mode: Any) -> str | None:
                return None if mode in (None, *allowed) else f"{mode!r} is not allowed"

            return check

        def absent(paths: Any) -> str | None:
            # An empty list would unmask /proc paths the engine hides.
            return None if paths is None else "not allowed"

        checks: dict[str, Callable[[Any], str | None]] = {
            "NetworkMode": network_mode,
            "Binds": self._binds,
            "Mounts": self._mounts,
            "SecurityOpt": self._security_opt,
            "CapAdd": _must_be_zero,
            "Privileged": _must_be_zero,
            "PidMode": one_of(""),
            "IpcMode": one_of("", "private", "shareable", "none"),
            "UTSMode": one_of(""),
            "UsernsMode": one_of(""),
            "CgroupnsMode": one_of("", "private"),
            "LogConfig": self._log_config,
            "MaskedPaths": absent,
            "ReadonlyPaths": absent,
        }
        free = frozenset(
            {
                "NanoCpus",
                "CpuShares",
                "CpuQuota",
                "CpuPeriod",
                "Memory",
                "MemorySwap",
                "MemoryReservation",
                "PidsLimit",
                "ShmSize",
                "CapDrop",
                "AutoRemove",
                "Init",
                "ReadonlyRootfs",
                "Tmpfs",
            }
        )
        try:
            _only("HostConfig", value, checks, free)
        except DockerRequestRefused as exc:
            return str(exc).removeprefix("HostConfig.")
        return None

    def _networking(self, value: Any) -> str | None:
        if value is None:
            return None
        if value == {self.network: None}:
            # What the Docker SDK sends for `network=`; the engine reads
            # only EndpointsConfig, so this says nothing.
            return None
        if not isinstance(value, dict) or set(value) - {"EndpointsConfig"}:
            return "only EndpointsConfig"
        endpoints = value.get("EndpointsConfig") or {}
        if not isinstance(endpoints, dict) or set(endpoints) - {self.network}:
            return f"only the network {self.network}"
        return None

    @staticmethod
    def _binds(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, list):
            return "a list"
        for bind in value:
            source = str(bind).split(":", 1)[0]
            if not HOME_NAME.match(source):
                return f"{bind!r}: only named selfagent-home-* volumes, never a host path"
        return None

    @staticmethod
    def _mounts(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, list):
            return "a list"
        for mount in value:
            if not isinstance(mount, dict):
                return "malformed"
            try:
                _only(
                    "mount",
                    mount,
                    {
                        "Type": lambda t: None if t == "volume" else "only volumes",
                        "Source": lambda s: (
                            None if isinstance(s, str) and HOME_NAME.match(s) else "only homes"
                        ),
                        "VolumeOptions": lambda o: (
                            None
                            if o is None
                            or (
                                isinstance(o, dict)
                                and _zero(o.get("DriverConfig"))
                                and not set(o) - {"NoCopy", "Labels", "DriverConfig"}
                            )
                            else "no driver configuration"
                        ),
                    },
                    frozenset({"Target", "ReadOnly", "Consistency"}),
                )
            except DockerRequestRefused as exc:
                return str(exc)
        return None

    @staticmethod
    def _security_opt(value: Any) -> str | None:
        options = value if isinstance(value, list) else []
        allowed = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
        if value is not None and not isinstance(value, list):
            return "a list"
        if not any(option in allowed for option in options):
            return "no-new-privileges is required"
        others = [option for option in options if option not in allowed]
        return f"{others} not allowed" if others else None

    @staticmethod
    def _log_config(value: Any) -> str | None:
        if value is None:
            return None
        # Other drivers can write to host paths or send to network addresses.
        if not isinstance(value, dict) or value.get("Type") not in (None, "", "json-file", "local"):
            return "only the json-file or local log driver"
        return None

    # -- volume create ------------------------------------------------------------

    @staticmethod
    def check_volume_create(body: dict[str, Any]) -> None:
        def name(value: Any) -> str | None:
            ok = isinstance(value, str) and HOME_NAME.match(value)
            return None if ok else "only selfagent-home-* volumes"

        def labels(value: Any) -> str | None:
            ok = isinstance(value, dict) and value.get(LABEL_HOME) == "1"
            return None if ok else f"the {LABEL_HOME}=1 label is required"

        def driver(value: Any) -> str | None:
            return None if value in (None, "", "local") else "only the local driver"

        _only(
            "body",
            body,
            # Options of the local driver can mount a host path (type=none, o=bind).
            {"Name": name, "Labels": labels, "Driver": driver, "DriverOpts": _must_be_zero},
        )


def _add_label_filter(query: str, label: str) -> str:
    """The query with `label` added to its `filters` (Docker ANDs label filters)."""
    params = parse_qs(query, keep_blank_values=True)
    raw = params.get("filters", ["{}"])
    if len(raw) != 1:
        raise DockerRequestRefused("filters given twice")
    try:
        filters = json.loads(raw[0] or "{}", object_pairs_hook=_strict_object)
    except ValueError as exc:
        raise DockerRequestRefused(f"malformed filters: {exc}") from exc
    if not isinstance(filters, dict):
        raise DockerRequestRefused("malformed filters")
    existing = filters.get("label")
    if existing is None:
        filters["label"] = [label]
    elif isinstance(existing, list):
        filters["label"] = [*existing, label]
    elif isinstance(existing, dict):
        filters["label"] = {**existing, label: True}
    else:
        raise DockerRequestRefused("malformed label filter")
    params["filters"] = [json.dumps(filters)]
    return urlencode(params, doseq=True)


# -- the server ---------------------------------------------------------------------

Handler = Callable[[Request, str, "re.Match[str]", dict[str, list[str]]], Awaitable[Response]]


class SocketProxy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = Policy(settings.image, settings.network)
        self._connections: set[asyncio.Task[None]] = set()
        self.upstream = Upstream(
            settings.socket, max_response=settings.max_response, timeout=settings.request_timeout
        )
        ref = OBJECT_REF
        # (method, path pattern, handler); the first match decides.
        self.routes: list[tuple[frozenset[str], re.Pattern[str], Handler]] = [
            (frozenset({"GET", "HEAD"}), re.compile(r"^/_ping$"), self._forward),
            (frozenset({"GET"}), re.compile(r"^/version$"), self._forward),
            (frozenset({"GET"}), re.compile(r"^/info$"), self._info),
            (frozenset({"GET"}), re.compile(r"^/images/(?P<name>.+)/json$"), self._image),
            (frozenset({"GET"}), re.compile(rf"^/networks/(?P<name>{ref})$"), self._network),
            (frozenset({"GET"}), re.compile(r"^/containers/json$"), self._list_containers),
            (frozenset({"POST"}), re.compile(r"^/containers/create$"), self._create_container),
            (frozenset({"GET"}), re.compile(rf"^/containers/(?P<ref>{ref})/json$"), self._inspect),
            (
                frozenset({"POST"}),
                re.compile(rf"^/containers/(?P<ref>{ref})/(?P<op>start|stop|kill|wait|rename)$"),
                self._container_op,
            ),
            (
                frozenset({"GET"}),
                re.compile(rf"^/containers/(?P<ref>{ref})/(?P<op>logs)$"),
                self._container_op,
            ),
            (
                frozenset({"DELETE"}),
                re.compile(rf"^/containers/(?P<ref>{ref})$"),
                self._container_op,
            ),
            (frozenset({"GET"}), re.compile(r"^/volumes$"), self._list_volumes),
            (frozenset({"POST"}), re.compile(r"^/volumes/create$"), self._create_volume),
            (frozenset({"GET", "DELETE"}), re.compile(rf"^/volumes/(?P<ref>{ref})$"), self._volume),
        ]

    # -- dispatch -------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except DockerRequestRefused as exc:
            log.warning("refused %s %s: %s", request.method, request.target[:200], exc)
            return refused(str(exc))
        except DockerProxyError as exc:
            return json_response(exc.status, "Error", {"message": str(exc)})
        except TimeoutError:
            return json_response(504, "Gateway Timeout", {"message": "the engine did not answer"})
        except (OSError, asyncio.IncompleteReadError) as exc:
            return json_response(502, "Bad Gateway", {"message": f"the engine: {exc}"})

    async def _dispatch(self, request: Request) -> Response:
        if "upgrade" in request.headers:
            raise DockerRequestRefused("hijacked (upgraded) connections are not allowed")
        prefix, path, query = request.split
        if not SAFE_PATH.match(path) or ".." in path or "//" in path:
            raise DockerRequestRefused(f"path {path[:100]!r} is not allowed")
        params = parse_qs(query, keep_blank_values=True)
        for methods, pattern, handler in self.routes:
            match = pattern.match(path)
            if match and request.method in methods:
                log.debug("%s %s", request.method, request.target[:200])
                return await handler(request, prefix, match, params)
        raise DockerRequestRefused(f"{request.method} {path} is not on the allow-list")

    async def _forward(
        self,
        request: Request,
        prefix: str = "",
        _match: re.Match[str] | None = None,
        _params: dict[str, list[str]] | None = None,
        *,
        target: str | None = None,
        body: bytes | None = None,
    ) -> Response:
        return await self.upstream.call(
            request.method,
            target if target is not None else request.target,
            request.body if body is None else body,
            request.headers.get("content-type"),
        )

    # -- engine, image, network ---------------------------------------------------

    async def _info(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        # The provisioner needs the engine's name (its default host label);
        # the rest (paths, registries, plugins, the swarm) is none of its business.
        response = await self._forward(request)
        if response.status != 200:
            return response
        info = response.json()
        kept = {k: info.get(k) for k in ("Name", "ServerVersion", "OSType", "Architecture")}
        return json_response(200, "OK", kept)

    async def _image(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        if match.group("name") != self.settings.image:
            raise DockerRequestRefused(f"only the image {self.settings.image} may be inspected")
        return await self._forward(request)

    async def _network(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        if match.group("name") != self.settings.network:
            raise DockerRequestRefused(f"only the network {self.settings.network} may be inspected")
        return await self._forward(request)

    # -- containers -----------------------------------------------------------------

    async def _list_containers(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        _, path, query = request.split
        query = _add_label_filter(query, f"{LABEL_SANDBOX}=1")
        return await self._forward(request, target=f"{prefix}{path}?{query}")

    async def _create_container(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        body = _parse_body(request.body)
        self.policy.check_create(params, body)
        return await self._forward(request, body=json.dumps(body).encode())

    async def _labelled_container(self, prefix: str, ref: str) -> tuple[Response, str | None]:
        """The inspect reply and the container's id, when it is a selfagent sandbox."""
        response = await self.upstream.call("GET", f"{prefix}/containers/{ref}/json")
        if response.status != 200:
            return response, None
        attrs = response.json()
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_SANDBOX) != "1":
            raise DockerRequestRefused(f"container {ref} is not a selfagent sandbox")
        return response, str(attrs["Id"])

    async def _inspect(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        response, _ = await self._labelled_container(prefix, match.group("ref"))
        return response

    async def _container_op(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        op = match.groupdict().get("op") or "remove"
        if op == "start" and request.body.strip() not in (b"", b"{}", b"null"):
            # Old API versions took a HostConfig here, past the create checks.
            raise DockerRequestRefused("start takes no body")
        if op == "rename":
            names = params.get("name", [])
            if len(names) != 1 or not CONTAINER_NAME.match(names[0]):
                raise DockerRequestRefused("a sandbox keeps a selfagent-sandbox-* name")
        if op == "logs" and params.get("follow", ["0"])[-1].lower() not in ("0", "false", ""):
            raise DockerRequestRefused("following logs (a stream) is not allowed")
        if op == "remove" and params.get("link", ["0"])[-1].lower() not in ("0", "false", ""):
            raise DockerRequestRefused("removing links is not allowed")
        response, container_id = await self._labelled_container(prefix, match.group("ref"))
        if container_id is None:
            return response
        # By id from here: the name could be given to another container meanwhile.
        _, path, query = request.split
        path = path[: match.start("ref")] + container_id + path[match.end("ref") :]
        target = prefix + path
        return await self._forward(request, target=target + (f"?{query}" if query else ""))

    # -- volumes --------------------------------------------------------------------

    async def _list_volumes(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        _, path, query = request.split
        query = _add_label_filter(query, f"{LABEL_HOME}=1")
        return await self._forward(request, target=f"{prefix}{path}?{query}")

    async def _create_volume(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        body = _parse_body(request.body)
        self.policy.check_volume_create(body)
        return await self._forward(request, body=json.dumps(body).encode())

    async def _volume(
        self, request: Request, prefix: str, match: re.Match[str], params: dict[str, list[str]]
    ) -> Response:
        name = match.group("ref")
        if not HOME_NAME.match(name):
            raise DockerRequestRefused("only selfagent-home-* volumes")
        inspected = await self.upstream.call("GET", f"{prefix}/volumes/{name}")
        if inspected.status != 200:
            return inspected
        labels = inspected.json().get("Labels") or {}
        if labels.get(LABEL_HOME) != "1":
            raise DockerRequestRefused(f"volume {name} is not a selfagent home")
        if request.method == "GET":
            return inspected
        return await self._forward(request)

    # -- connections ----------------------------------------------------------------

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    request = await asyncio.wait_for(
                        read_request(reader, self.settings.max_body), self.settings.idle_timeout
                    )
                except DockerProxyError as exc:
                    reply = json_response(exc.status, "Error", {"message": str(exc)})
                    writer.write(reply.encode(keep_alive=False))
                    await writer.drain()
                    return
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                if request is None:
                    return
                response = await self.handle(request)
                # A client that asked to hijack the connection will not reuse it.
                keep = request.keep_alive and "upgrade" not in request.headers
                writer.write(response.encode(keep, head_only=request.method == "HEAD"))
                await writer.drain()
                if not keep:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _tracked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.serve_connection(reader, writer)
        except asyncio.CancelledError:
            # Shutting down; a cancelled connection task would be logged as an
            # error by asyncio's stream callback.
            pass
        finally:
            self._connections.discard(task)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        server = await asyncio.start_server(
            self._tracked,
            self.settings.listen_host,
            self.settings.port,
            limit=MAX_HEAD_LINE * 2,
        )
        log.info(
            "docker proxy on %s:%d -> %s (image %s, network %s)",
            self.settings.listen_host,
            self.settings.port,
            self.settings.socket,
            self.settings.image,
            self.settings.network,
        )
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            # Idle keep-alive connections would otherwise outlive the server.
            connections = list(self._connections)
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)


def check(port: int) -> int:
    """The container health check: the proxy answers /_ping (and so does the engine behind it)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        print(f"docker proxy: {exc}", file=sys.stderr)
        return 1
    return 0 if reply.startswith(b"HTTP/1.1 200") else 1


async def _run(settings: Settings) -> None:
    proxy = SocketProxy(settings)
    task = asyncio.create_task(proxy.serve())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selfagent.provisioner.socket_proxy")
    parser.add_argument("--check", action="store_true", help="exit 0 if the proxy answers")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.check:
        sys.exit(check(settings.port))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
