"""The broker's JetStream context, from the one place that knows where FastStream keeps it."""

from __future__ import annotations

from faststream.exceptions import IncorrectState
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from selfagent.errors import BusUnavailable


def jetstream(broker: NatsBroker, *, timeout: float | None = None) -> JetStreamContext:
    """The JetStream context of a connected broker (with its own API
    ``timeout`` when given, else the broker's).

    FastStream 0.7 offers no public accessor for it, so this is the only
    module that reaches into the broker's internals: a FastStream upgrade
    changes one line. A broker that is not connected (yet) raises
    :class:`BusUnavailable` rather than FastStream's own exception.
    """
    try:
        state = broker.config.connection_state
        if timeout is None:
            context: JetStreamContext = state.stream
        else:
            context = state.connection.jetstream(timeout=timeout)
    except IncorrectState as exc:
        raise BusUnavailable("not connected to NATS") from exc
    return context
