"""The other provisioner hosts, as their capacity announcements describe them.

Every provisioner announces a :class:`HostCapacity` on
``agent.provisioner.capacity`` (every ``interval`` seconds and on every
change) and listens to the others'. From that it knows which hosts are
alive, which sessions and sandboxes each holds, and which has the most room
for a new session: what the one provisioner that receives a shared request
(queue group) needs to answer it or hand it to the right host.

A host is gone when it says it is stopping, or when nothing was heard from
it for ``STALE_PERIODS`` of its own intervals.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from selfagent.schemas import HostCapacity

log = logging.getLogger(__name__)

# A host that missed this many announcements in a row is taken as gone: one
# missed publish is a hiccup, three is a host that stopped without saying so.
STALE_PERIODS = 3.0
# A lease handed to a host counts against its room until an announcement
# that is this much younger than the hand-over (by then the host has seen it).
COUNTED_AFTER = 0.1


@dataclass
class _Heard:
    capacity: HostCapacity
    at: float


def room(capacity: HostCapacity) -> int:
    """Places a new session could take: empty places plus warm desktops waiting for one."""
    return capacity.free + capacity.warm


class Peers:
    """The live announcements of the other hosts, and leases on their way to each."""

    def __init__(self, own_host: str, own_instance: str) -> None:
        self.own_host = own_host
        self.own_instance = own_instance
        self._heard: dict[str, _Heard] = {}
        # Leases handed to a host that its announcements may not count yet
        # (when each was handed over); without this a burst would all go to
        # one host. This host's own room is always read live.
        self._placing: dict[str, list[float]] = {}
        self._warned: set[str] = set()

    def heard(self, capacity: HostCapacity, now: float | None = None) -> None:
        if capacity.host == self.own_host:
            if capacity.instance != self.own_instance and capacity.instance not in self._warned:
                self._warned.add(capacity.instance)
                log.warning(
                    "another provisioner announces this host's name %r: give each host its own "
                    "PROVISIONER_HOST_NAME",
                    capacity.host,
                )
            return
        at = time.monotonic() if now is None else now
        if capacity.stopping:
            if self._heard.pop(capacity.host, None) is not None:
                log.info("provisioner host %s is stopping", capacity.host)
            return
        if capacity.host not in self._heard:
            log.info("provisioner host %s is up (%d places)", capacity.host, capacity.max)
        self._heard[capacity.host] = _Heard(capacity, at)
        handed = self._placing.get(capacity.host)
        if handed:
            handed[:] = [t for t in handed if at - t < COUNTED_AFTER]

    def live(self, now: float | None = None) -> list[HostCapacity]:
        """The other hosts heard from recently, by name."""
        at = time.monotonic() if now is None else now
        for host, heard in list(self._heard.items()):
            if at - heard.at > STALE_PERIODS * heard.capacity.interval:
                log.warning(
                    "provisioner host %s silent for %.1f s: taken as gone", host, at - heard.at
                )
                del self._heard[host]
        return [self._heard[host].capacity for host in sorted(self._heard)]

    def holder_of_session(self, session_id: str) -> str | None:
        for capacity in self.live():
            if any(s.session_id == session_id for s in capacity.sandboxes):
                return capacity.host
        return None

    def holder_of_sandbox(self, sandbox_id: str) -> str | None:
        for capacity in self.live():
            if any(s.sandbox_id == sandbox_id for s in capacity.sandboxes):
                return capacity.host
        return None

    def choose(self, own: HostCapacity) -> str:
        """The host with the most room for a new session; ties: most warm, then this one."""

        def key(capacity: HostCapacity) -> tuple[int, int, int]:
            placing = len(self._placing.get(capacity.host, ()))
            mine = 1 if capacity.host == self.own_host else 0
            return (room(capacity) - placing, capacity.warm - placing, mine)

        # max() keeps the first of equals: among other hosts, the first by name.
        return max([own, *self.live()], key=key).host

    def placing(self, host: str) -> float:
        """A lease is being handed to ``host``; returns the token for :meth:`placed`."""
        token = time.monotonic()
        self._placing.setdefault(host, []).append(token)
        return token

    def placed(self, host: str, token: float) -> None:
        """The hand-over ended: the host's announcements count it (or it failed)."""
        handed = self._placing.get(host)
        if handed and token in handed:
            handed.remove(token)
