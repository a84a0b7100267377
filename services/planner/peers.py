"""The other planner replicas, as their heartbeats (``agent.planner.heartbeat``) tell.

A planner killed mid-task cannot give its task back; the tasks work queue
would hand it out again only when its ack wait runs out (30 s). Every replica
names the tasks it runs, with the ack subject of its delivery, in a heartbeat
every second; when one falls silent, a survivor sends ``-NAK`` on those ack
subjects and the queue hands the tasks out at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from faststream.nats import NatsBroker

from selfagent.schemas import HeldTask, PlannerHeartbeat, subjects

log = logging.getLogger(__name__)

# Where the tasks queue's deliveries are acked: a heartbeat naming any other
# subject is not followed.
ACK_PREFIX = f"$JS.ACK.{subjects.TASKS_STREAM}.{subjects.PLANNER_DURABLE}."


@dataclass
class _Peer:
    seen: float
    tasks: list[HeldTask] = field(default_factory=list)


class PeerWatch:
    """When each other planner replica was last heard, and the tasks its last heartbeat named."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._peers: dict[str, _Peer] = {}

    def beat(self, beat: PlannerHeartbeat, now: float | None = None) -> None:
        if beat.instance == self.instance:
            return  # our own heartbeat, back from the bus
        self._peers[beat.instance] = _Peer(
            time.monotonic() if now is None else now, list(beat.tasks)
        )

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def silent(
        self, silence: float, own: set[str], now: float | None = None
    ) -> dict[str, list[HeldTask]]:
        """The peers silent for more than ``silence`` seconds (forgotten from now on), each
        with the tasks this replica must hand back to the queue.

        One replica hands them back, the live one with the lowest instance
        id: a ``-NAK`` on a delivery the queue has already handed out again
        makes it hand the task out once more (nats-server honours a stale
        NAK), so two survivors both sending it could start the task twice.
        If that replica died too, the task waits out its ack wait as before.

        A task that a live replica names as its own (``own``: the task ids
        this replica runs) is left alone: it has been handed over already.
        """
        now = time.monotonic() if now is None else now
        gone = {name: peer for name, peer in self._peers.items() if now - peer.seen > silence}
        for name in gone:
            del self._peers[name]
        if not gone:
            return {}
        alive = [self.instance, *self._peers]
        if min(alive) != self.instance:
            return {name: [] for name in gone}
        running = set(own)
        for peer in self._peers.values():
            running.update(task.task_id for task in peer.tasks)
        return {
            name: [task for task in peer.tasks if task.task_id not in running]
            for name, peer in gone.items()
        }


async def hand_back(broker: NatsBroker, held: HeldTask, peer: str) -> bool:
    """Give a silent peer's task back to the queue (``-NAK`` on its delivery's ack
    subject), so that the queue hands it out again now; False if it could not be."""
    if not held.ack_subject.startswith(ACK_PREFIX):
        log.warning("planner %s: not a task's ack subject: %s", peer, held.ack_subject)
        return False
    try:
        await broker.publish(b"-NAK", held.ack_subject)
    except Exception as exc:
        # It comes back after its ack wait instead.
        log.warning("could not hand over task %s: %s", held.task_id, exc)
        return False
    log.info("task %s of planner %s handed back to the queue", held.task_id, peer)
    return True
