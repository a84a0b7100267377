"""``Peers``: which hosts are alive, who holds a session, where a new session goes."""

from __future__ import annotations

from selfagent.bus.hosts import Peers
from selfagent.schemas import HostCapacity, HostSandbox


def cap(host: str, free: int, warm: int = 0, **extra: object) -> HostCapacity:
    return HostCapacity.model_validate(
        {
            "host": host,
            "instance": f"run-{host}",
            "free": free,
            "warm": warm,
            "starting": 0,
            "leased": 0,
            "max": 4,
            "interval": 2.0,
            **extra,
        }
    )


def test_most_room_wins_then_most_warm_then_this_host() -> None:
    peers = Peers("a", "run-a")
    peers.heard(cap("b", free=2))
    peers.heard(cap("c", free=1, warm=1))
    # b and c have the same room (free + warm): c has a warm desktop.
    assert peers.choose(cap("a", free=1)) == "c"
    # This host wins a full tie.
    assert peers.choose(cap("a", free=1, warm=1)) == "a"
    assert peers.choose(cap("a", free=0)) == "c"


def test_a_lease_handed_over_counts_until_the_hosts_next_announcement() -> None:
    peers = Peers("a", "run-a")
    peers.heard(cap("b", free=3))
    token = peers.placing("b")
    # b looks one place smaller while the hand-over runs: a burst spreads.
    assert peers.choose(cap("a", free=2)) == "a"
    peers.placed("b", token)
    assert peers.choose(cap("a", free=2)) == "b"


def test_silent_stopping_and_own_announcements() -> None:
    peers = Peers("a", "run-a")
    peers.heard(cap("a", free=4))
    assert peers.live() == []
    peers.heard(cap("b", free=1, sandboxes=[HostSandbox(sandbox_id="sb-1", session_id="s1")]))
    assert peers.holder_of_session("s1") == "b"
    assert peers.holder_of_sandbox("sb-1") == "b"
    assert peers.holder_of_session("s2") is None
    peers.heard(cap("b", free=1, stopping=True))
    assert peers.holder_of_session("s1") is None
    peers.heard(cap("c", free=1), now=10.0)
    # Three intervals of 2 s without a word: gone.
    assert [c.host for c in peers.live(now=15.9)] == ["c"]
    assert peers.live(now=16.1) == []
