"""Every error that selfagent raises on purpose, in one tree.

This module is pure: it imports nothing but the standard library and the
message schemas, so any module (a parser, a protocol client, the bus) can
raise a project error without importing the bus or a service.

Catch ``SelfagentError`` to catch anything selfagent raises deliberately;
anything else that escapes is a bug. The tree::

    SelfagentError
    ├── ConfigError                 a setting is missing or invalid; a service stops at start
    ├── BusError                    talking to NATS
    │   ├── BusUnavailable          not connected (yet); the call can be retried
    │   ├── BusAuthError            credentials refused or permission denied; never retried
    │   ├── RequestTimeout          no reply within the deadline
    │   └── RemoteError             the other side answered ``ok: false``
    ├── InvalidMessage              a payload failed schema validation
    ├── ModelError                  a model endpoint gave nothing usable
    │   ├── LLMError                the chat-completions call failed (after retries)
    │   └── VLMError                the grounding model gave no answer
    ├── JSONProblem                 model text that should hold JSON does not
    ├── ActionParseError            the model's reply holds no valid action
    ├── GroundingError              grounding could not run
    │   ├── ImageError              the screenshot cannot be decoded
    │   ├── ResizeError             the image cannot be mapped onto the model's grid
    │   └── OCRError                tesseract failed
    ├── DesktopError                the sandbox desktop and its servers
    │   ├── RFBError                the VNC connection failed or broke the protocol
    │   │   ├── VncAuthFailed       the VNC server refused the password
    │   │   └── VncRefused          the VNC server turned the connection away, saying why
    │   ├── DesktopUnavailable      the desktop cannot be reached right now
    │   └── SandboxExecError        the exec/file endpoint failed or refused
    │       ├── SandboxNotFound     no such file
    │       └── FileTooLarge        a transfer exceeded its limit
    ├── ActionRejected              an action is invalid for this screen; nothing ran
    │   └── UnknownKey              a key name that has no keysym
    ├── LocalModeError              ``selfagent up`` could not start a part
    └── ProvisionerError            leasing sandbox desktops
        ├── CapacityExhausted       the host stayed full for the whole wait; nothing started
        ├── SandboxStartFailed      a desktop could not be started
        ├── UnknownSandbox          no such sandbox (or the session holds none)
        ├── DockerRequestRefused    the Docker API proxy refused a call (HTTP 403)
        └── DockerProxyError        a malformed call, or the engine answered badly or not at all
"""

from __future__ import annotations

from typing import Literal

from selfagent.schemas import ErrorCode, ErrorInfo

__all__ = [
    "ActionParseError",
    "ActionRejected",
    "BusAuthError",
    "BusError",
    "BusUnavailable",
    "CapacityExhausted",
    "ConfigError",
    "DesktopError",
    "DesktopUnavailable",
    "DockerProxyError",
    "DockerRequestRefused",
    "FileTooLarge",
    "GroundingError",
    "ImageError",
    "InvalidMessage",
    "JSONProblem",
    "LLMError",
    "LLMReason",
    "LocalModeError",
    "ModelError",
    "OCRError",
    "ProvisionerError",
    "RFBError",
    "RemoteError",
    "RequestTimeout",
    "ResizeError",
    "SandboxExecError",
    "SandboxNotFound",
    "SandboxStartFailed",
    "SelfagentError",
    "UnknownKey",
    "UnknownSandbox",
    "VLMError",
    "VncAuthFailed",
    "VncRefused",
]


class SelfagentError(Exception):
    """Base class of every error selfagent raises on purpose."""


class ConfigError(SelfagentError):
    """A setting is missing or invalid; the service cannot start with it."""


# -- the bus ---------------------------------------------------------------


class BusError(SelfagentError):
    pass


class BusUnavailable(BusError):
    """NATS is not connected (yet); the request can be retried."""


class BusAuthError(BusError):
    """NATS refused our credentials or a permission.

    Retrying cannot fix it, so a service that meets it at start stops with
    this message instead of reconnecting forever.
    """


class RequestTimeout(BusError):
    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no reply on {subject} within {timeout:.1f}s")
        self.subject = subject
        self.timeout = timeout


class RemoteError(BusError):
    def __init__(self, subject: str, error: ErrorInfo) -> None:
        super().__init__(f"{subject}: {error.code.value}: {error.message}")
        self.subject = subject
        self.error = error

    @property
    def code(self) -> ErrorCode:
        return self.error.code


class InvalidMessage(SelfagentError):
    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(f"invalid message on {subject}: {detail}")
        self.subject = subject
        self.detail = detail


# -- models ----------------------------------------------------------------

LLMReason = Literal[
    "timeout", "rate_limited", "server_error", "bad_request", "bad_response", "connection"
]


class ModelError(SelfagentError):
    pass


class LLMError(ModelError):
    """The model endpoint gave no usable reply.

    ``reason`` says why: ``timeout``, ``rate_limited``, ``server_error`` and
    ``connection`` are what remained after retries; ``bad_request`` is a 4xx
    that retrying cannot fix; ``bad_response`` is a body that is not a chat
    completion. ``status`` is the HTTP status when there was one.
    """

    def __init__(
        self, reason: LLMReason, message: str, *, status: int | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.reason: LLMReason = reason
        self.status = status
        self.attempts = attempts


class VLMError(ModelError):
    """The grounding model could not give an answer."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class JSONProblem(SelfagentError, ValueError):
    """Text that is not JSON even with the usual slips forgiven; the message says where.

    Also a ``ValueError``, as ``json.loads`` raises one for the same thing.
    """


class ActionParseError(SelfagentError):
    """The model's reply holds no valid action.

    ``str(error)`` is one or two sentences addressed to the model, saying
    exactly what was wrong; it is meant to be sent back to it on retry.
    ``raw`` is the fragment that failed (possibly empty), for logs.
    """

    def __init__(self, message: str, *, raw: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.raw = raw[:2000]


# -- grounding -------------------------------------------------------------


class GroundingError(SelfagentError):
    pass


class ImageError(GroundingError):
    """The screenshot cannot be decoded or is too large."""


class ResizeError(GroundingError):
    """The image cannot be mapped onto the model's grid."""


class OCRError(GroundingError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- the desktop -----------------------------------------------------------


class DesktopError(SelfagentError):
    pass


class RFBError(DesktopError):
    """The VNC connection failed or the server broke the protocol."""


class VncAuthFailed(RFBError):
    """The VNC server refused the password (or offered no security type we accept)."""


class VncRefused(RFBError):
    """The VNC server refused the connection before security; ``reason`` is its text."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the VNC server refused the connection: {reason}")
        self.reason = reason


class DesktopUnavailable(DesktopError):
    """The desktop cannot be reached right now (an action that hits this did not run)."""


class SandboxExecError(DesktopError):
    """The exec endpoint is missing, unreachable or refused the request."""


class SandboxNotFound(SandboxExecError):
    """The sandbox answered 404: no such file."""


class FileTooLarge(SandboxExecError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"file of at least {size} bytes exceeds the {limit // (1024 * 1024)} MiB limit"
        )
        self.size = size
        self.limit = limit


class ActionRejected(SelfagentError):
    """An action cannot run on this screen; it was refused before any input was sent."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownKey(ActionRejected):
    def __init__(self, name: str) -> None:
        super().__init__(
            ErrorCode.UNKNOWN_KEY,
            f"unknown key {name!r}: use X keysym names as xdotool does "
            "(e.g. Return, Escape, ctrl, alt, shift, super, Tab, F5, Left, Page_Down, a)",
        )
        self.name = name


class LocalModeError(SelfagentError):
    """``selfagent up`` could not start one of its parts."""


# -- the provisioner ---------------------------------------------------------


class ProvisionerError(SelfagentError):
    """Leasing, starting or reaching a sandbox desktop failed."""


class CapacityExhausted(ProvisionerError):
    """The host had no room for another desktop during the whole wait; nothing was started."""


class SandboxStartFailed(ProvisionerError):
    """A desktop could not be started (or did not become ready in time); it was cleaned up."""


class UnknownSandbox(ProvisionerError):
    """No sandbox by that id on this provisioner."""


class DockerRequestRefused(ProvisionerError):
    """The Docker API proxy refused a call: not on its allow-list, or not on a selfagent object."""


class DockerProxyError(ProvisionerError):
    """The Docker API proxy could not pass a call on: the request was malformed or too
    large, or the engine answered badly or not at all. ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
