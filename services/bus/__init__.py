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
from .jetstream import jetstream
from .service import Service
from .settings import ServiceSettings

__all__ = [
    "MAX_PAYLOAD",
    "BusError",
    "InvalidMessage",
    "RemoteError",
    "RequestTimeout",
    "SelfagentError",
    "Service",
    "ServiceSettings",
    "error_reply",
    "jetstream",
    "make_broker",
    "parse",
    "reject",
    "request",
    "start_with_retry",
    "typed_handler",
]
