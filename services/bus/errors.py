"""The bus's errors, re-exported from the one tree in ``selfagent.errors``."""

from selfagent.errors import (
    BusAuthError,
    BusError,
    BusUnavailable,
    InvalidMessage,
    RemoteError,
    RequestTimeout,
    SelfagentError,
)

__all__ = [
    "BusAuthError",
    "BusError",
    "BusUnavailable",
    "InvalidMessage",
    "RemoteError",
    "RequestTimeout",
    "SelfagentError",
]
