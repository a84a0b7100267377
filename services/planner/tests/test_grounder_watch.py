"""Which grounding request died with its grounder replica (GrounderWatch)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from selfagent.planner.runner import GrounderWatch
from selfagent.schemas import GrounderHeartbeat

SILENCE = 0.2


def beat(watch: GrounderWatch, instance: str, *grounding: str) -> None:
    watch.hear(
        GrounderHeartbeat(instance=instance, started_at=datetime.now(UTC), grounding=[*grounding])
    )


def test_a_claimed_request_is_lost_only_when_its_holder_falls_silent() -> None:
    watch = GrounderWatch()
    sent = time.monotonic()
    beat(watch, "a", "r1")
    beat(watch, "b")
    assert watch.lost("r1", sent, SILENCE) is None
    time.sleep(SILENCE + 0.05)
    beat(watch, "b")  # the other replica lives on; the holder does not
    assert watch.lost("r1", sent, SILENCE) == "a"


def test_an_unclaimed_request_waits_while_every_replica_lives() -> None:
    watch = GrounderWatch()
    beat(watch, "a")
    sent = time.monotonic()
    for _ in range(3):
        time.sleep(SILENCE / 2)
        beat(watch, "a")  # busy: it has not taken the request yet
    assert watch.lost("r1", sent, SILENCE) is None


@pytest.mark.parametrize("died_before_sending", [False, True])
def test_an_unclaimed_request_is_lost_when_a_replica_alive_at_sending_dies(
    died_before_sending: bool,
) -> None:
    watch = GrounderWatch()
    beat(watch, "a")
    if died_before_sending:
        # Long dead when the request went out: it cannot have taken it.
        time.sleep(SILENCE * 2)
    sent = time.monotonic()
    time.sleep(SILENCE + 0.05)
    assert watch.lost("r1", sent, SILENCE) == (None if died_before_sending else "a")


def test_forgotten_requests_are_not_held() -> None:
    watch = GrounderWatch()
    sent = time.monotonic()
    beat(watch, "a", "r1")
    watch.forget("r1")
    time.sleep(SILENCE + 0.05)
    # Unclaimed now, but "a" was alive at sending and fell silent: asked again.
    assert watch.lost("r1", sent, SILENCE) == "a"
