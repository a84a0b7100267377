"""The one exception hierarchy that selfagent's Python API raises.

SelfagentError
├── BusError
│   ├── RequestTimeout      no reply within the deadline
│   └── RemoteError         the other side answered ``ok: false``
└── InvalidMessage          a payload failed schema validation
"""

from __future__ import annotations

from selfagent.schemas import ErrorCode, ErrorInfo


class SelfagentError(Exception):
    """Base class of every error selfagent raises on purpose."""


class BusError(SelfagentError):
    pass


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
