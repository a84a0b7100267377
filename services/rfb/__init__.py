"""The RFB (VNC) protocol, once, for every part of selfagent that speaks it.

- ``RFBClient``: the actuator's connection, a live framebuffer plus input.
- ``client_handshake``: log in to a VNC server over any byte stream (the
  gateway's upstream, test clients); security None first, then VncAuth.
- ``server_handshake``, ``refusal``, ``ClientMessageFilter``: the server side
  the gateway plays towards the browser.

Every length a peer announces is capped before it is read (``_caps``);
failures are ``selfagent.errors.RFBError`` and its subclasses.
"""

from ._auth import vnc_auth_response
from ._client import BUTTON_BITS, WHEEL_BITS, RFBClient
from ._handshake import Handshake, client_handshake
from ._protocol import (
    ENCODING_RAW,
    PIXEL_FORMAT_BGRX,
    PROTOCOL_38,
    SEC_NONE,
    SEC_VNC_AUTH,
    ByteReader,
    ByteWriter,
    ServerInit,
    pointer_event,
    set_encodings,
    set_pixel_format,
    update_request,
)
from ._server import INPUT_TYPES, ClientMessageFilter, message_length, refusal, server_handshake

__all__ = [
    "BUTTON_BITS",
    "ENCODING_RAW",
    "INPUT_TYPES",
    "PIXEL_FORMAT_BGRX",
    "PROTOCOL_38",
    "SEC_NONE",
    "SEC_VNC_AUTH",
    "WHEEL_BITS",
    "ByteReader",
    "ByteWriter",
    "ClientMessageFilter",
    "Handshake",
    "RFBClient",
    "ServerInit",
    "client_handshake",
    "message_length",
    "pointer_event",
    "refusal",
    "server_handshake",
    "set_encodings",
    "set_pixel_format",
    "update_request",
    "vnc_auth_response",
]
