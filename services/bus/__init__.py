"""Bus helpers shared by every service: broker setup, validation, typed request/reply."""

from .broker import (
    MAX_PAYLOAD,
    NO_REPLY,
    error_reply,
    make_broker,
    parse,
    pull_inbox,
    reject,
    request,
    start_with_retry,
    typed_handler,
    typed_subject_handler,
)
from .errors import BusError, InvalidMessage, RemoteError, RequestTimeout, SelfagentError
from .jetstream import jetstream
from .service import Service
from .settings import DesktopsMode, ServiceSettings, desktops_field

__all__ = [
    "MAX_PAYLOAD",
    "NO_REPLY",
    "BusError",
    "DesktopsMode",
    "InvalidMessage",
    "RemoteError",
    "RequestTimeout",
    "SelfagentError",
    "Service",
    "ServiceSettings",
    "desktops_field",
    "error_reply",
    "jetstream",
    "make_broker",
    "parse",
    "pull_inbox",
    "reject",
    "request",
    "start_with_retry",
    "typed_handler",
    "typed_subject_handler",
]
