"""The broker's JetStream context, from the one place that knows where FastStream keeps it."""

from __future__ import annotations

from faststream.exceptions import IncorrectState
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from selfagent.errors import BusUnavailable


def jetstream(broker: NatsBroker) -> JetStreamContext:
    """The JetStream context of a connected broker.

    FastStream 0.7 offers no public accessor for it, so this is the only
    module that reaches into the broker's internals: a FastStream upgrade
    changes one line. A broker that is not connected (yet) raises
    :class:`BusUnavailable` rather than FastStream's own exception.
    """
    try:
        context: JetStreamContext = broker.config.connection_state.stream
    except IncorrectState as exc:
        raise BusUnavailable("not connected to NATS") from exc
    return context
