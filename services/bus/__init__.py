"""Bus helpers shared by every service: broker setup, validation, typed request/reply."""

from .broker import (
    MAX_PAYLOAD,
    error_reply,
    make_broker,
    parse,
    reject,
    request,
    start_with_retry,
    typed_handler,
)
from .errors import BusError, InvalidMessage, RemoteError, RequestTimeout, SelfagentError

__all__ = [
    "MAX_PAYLOAD",
    "BusError",
    "InvalidMessage",
    "RemoteError",
    "RequestTimeout",
    "SelfagentError",
    "error_reply",
    "make_broker",
    "parse",
    "reject",
    "request",
    "start_with_retry",
    "typed_handler",
]
