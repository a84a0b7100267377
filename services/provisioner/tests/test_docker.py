"""The Docker backend and the pool against a real engine and the real sandbox image."""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.errors import NotFound

from selfagent.errors import ConfigError, SandboxStartFailed
from selfagent.provisioner.backend import LABEL_HOST
from selfagent.provisioner.config import tame_host
from selfagent.provisioner.docker_backend import DockerBackend
from selfagent.provisioner.state import StateStore
from selfagent.schemas import SandboxLost
from tests.harness.docker import build_image, require_engine

from .helpers import first_frame, running_pool, shell, unique_host, wait_until, warm_count

pytestmark = pytest.mark.docker

IMAGE = "selfagent/sandbox:test"
SCREEN = (1024, 640)
GIB = 1 << 30


@dataclass
class Engine:
    client: docker.DockerClient
    host: str
    network: str

    def containers(self) -> list[str]:
        found = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_HOST}={self.host}"}
        )
        return sorted(c.name or c.id or "" for c in found)

    def volumes(self) -> list[str]:
        found = self.client.volumes.list(filters={"label": f"{LABEL_HOST}={self.host}"})
        return sorted(v.name or "" for v in found)

    def backend(self, data_dir: Path, **options: object) -> tuple[DockerBackend, StateStore]:
        state = StateStore(data_dir)
        settings: dict[str, object] = {
            "image": IMAGE,
            "network": self.network,
            "screen": SCREEN,
            "start_timeout": 180,
            **options,
        }
        backend = DockerBackend(state, host=self.host, **settings)  # type: ignore[arg-type]
        return backend, state


@pytest.fixture(scope="module")
def image() -> str:
    require_engine()
    build_image("sandbox/Dockerfile", IMAGE)
    return IMAGE


@pytest.fixture
def engine(image: str) -> Iterator[Engine]:
    client = docker.from_env()
    network = client.networks.create(f"selfagent-test-desktop-{uuid.uuid4().hex[:8]}")
    found = Engine(client, unique_host(), network.name or "")
    yield found
    # Whatever a failed test left behind goes; a passing test leaves nothing.
    left = found.containers(), found.volumes()
    for container in client.containers.list(
        all=True, filters={"label": f"{LABEL_HOST}={found.host}"}
    ):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": f"{LABEL_HOST}={found.host}"}):
        volume.remove(force=True)
    network.remove()
    client.close()
    assert left == ([], []), f"left behind: {left}"


async def test_containers_have_limits_labels_one_network_and_their_own_secrets(
    engine: Engine, tmp_path: Path
) -> None:
    backend, state = engine.backend(tmp_path)
    await backend.open()
    async with running_pool(backend, state, warm=0, max_per_host=3) as (pool, _events):
        first, second = await asyncio.gather(pool.lease("sess-a"), pool.lease("sess-b"))
        for outcome, session in ((first, "sess-a"), (second, "sess-b")):
            handle = outcome.handle
            attrs = engine.client.containers.get(handle.ref).attrs
            host_config = attrs["HostConfig"]
            assert host_config["NanoCpus"] == 1_000_000_000
            assert host_config["Memory"] == GIB
            assert host_config["MemorySwap"] == GIB
            assert host_config["PidsLimit"] == 512
            assert host_config["CapDrop"] == ["ALL"]
            assert "no-new-privileges:true" in host_config["SecurityOpt"]
            assert host_config["ShmSize"] == 512 << 20
            assert not host_config["Privileged"]
            assert list(attrs["NetworkSettings"]["Networks"]) == [engine.network]
            assert attrs["Config"]["User"] == "agent"
            labels = attrs["Config"]["Labels"]
            assert labels["selfagent.sandbox"] == "1"
            assert labels["selfagent.session"] == session
            assert labels["selfagent.host"] == engine.host
            mounts = [(m["Type"], m["Name"], m["Destination"]) for m in attrs["Mounts"]]
            assert mounts == [("volume", f"selfagent-home-{session}", "/home/agent")]
            secrets = (handle.secrets.vnc_password, handle.secrets.exec_token)
            assert not any(secret in value for value in labels.values() for secret in secrets)

            # Reachable from here on its network address, with its own secrets only.
            assert (
                await first_frame(
                    handle.endpoint.vnc_host, handle.endpoint.vnc_port, handle.secrets.vnc_password
                )
                == SCREEN
            )
            reply = (await shell(handle, "id -un; grep CapEff /proc/self/status; env")).json()
            lines = reply["stdout"].splitlines()
            assert lines[0] == "agent"
            assert lines[1].split() == ["CapEff:", "0000000000000000"]
            assert not any(secret in reply["stdout"] for secret in secrets)

            record = state.sandbox_dir / f"{handle.sandbox_id}.json"
            assert stat.S_IMODE(record.stat().st_mode) == 0o600
            assert handle.secrets.exec_token in record.read_text()

        a, b = first.handle, second.handle
        assert a.secrets.vnc_password != b.secrets.vnc_password
        assert a.secrets.exec_token != b.secrets.exec_token
        assert a.endpoint.vnc_host != b.endpoint.vnc_host
        assert (await shell(b, "true", token=a.secrets.exec_token)).status_code == 401

        for session in ("sess-a", "sess-b"):
            await pool.release(session, keep_home=False)
        assert engine.containers() == [] and engine.volumes() == []
    await backend.close()


async def test_the_home_volume_outlives_the_desktop_until_deleted(
    engine: Engine, tmp_path: Path
) -> None:
    backend, state = engine.backend(tmp_path)
    await backend.open()
    async with running_pool(backend, state, warm=1, max_per_host=2) as (pool, _events):
        await wait_until(lambda: warm_count(pool) == 1, 180, "a warm container")
        first = await pool.lease("homed")
        assert first.warm
        home = first.handle.home
        # A warm desktop's home is its own, and now the session's.
        assert home == f"selfagent-home-{first.handle.sandbox_id}"
        assert state.home_of("homed") == home
        container = engine.client.containers.get(first.handle.ref)
        assert container.name == f"selfagent-sandbox-{first.handle.sandbox_id}-homed"
        await shell(first.handle, "echo kept > ~/note.txt")

        await pool.release("homed")
        with pytest.raises(NotFound):
            engine.client.containers.get(first.handle.ref)
        assert home in engine.volumes()

        # The next desktop of the session: cold, with that home.
        second = await pool.lease("homed")
        assert not second.warm
        assert second.handle.home == home
        assert (await shell(second.handle, "cat ~/note.txt")).json()["stdout"] == "kept\n"

        sandbox_id, deleted = await pool.release("homed", keep_home=False)
        assert (sandbox_id, deleted) == (second.handle.sandbox_id, True)
        assert home not in engine.volumes()
    # The warm desktop's container and its home went with the pool.
    assert engine.containers() == [] and engine.volumes() == []
    await backend.close()


async def test_a_new_provisioner_adopts_running_containers_and_removes_orphans(
    engine: Engine, tmp_path: Path
) -> None:
    backend, state = engine.backend(tmp_path)
    await backend.open()
    async with running_pool(backend, state, warm=1, max_per_host=3, keep_running=True) as (
        pool,
        _events,
    ):
        kept = await pool.lease("kept")
        await wait_until(lambda: warm_count(pool) == 1, 180, "a warm container")
        warm_id = next(i.sandbox_id for i in pool.sandboxes() if i.state == "warm")
    # A container of this host without a record: its secrets are gone with it.
    orphan_id = f"sb-orphan{uuid.uuid4().hex[:6]}"
    orphan = await backend.create(orphan_id, None, f"selfagent-home-{orphan_id}")
    state.drop_sandbox(orphan.sandbox_id)
    await backend.close()
    assert len(engine.containers()) == 3

    again, state2 = engine.backend(tmp_path)
    async with running_pool(again, state2, warm=1, max_per_host=3) as (pool2, events):
        infos = {info.sandbox_id: info.state for info in pool2.sandboxes()}
        assert infos == {kept.handle.sandbox_id: "leased", warm_id: "warm"}
        assert not [name for name in engine.containers() if orphan_id in name]
        assert f"selfagent-home-{orphan_id}" not in engine.volumes()

        same = await pool2.lease("kept")
        assert same.handle.sandbox_id == kept.handle.sandbox_id
        assert same.handle.secrets == kept.handle.secrets
        assert (
            await first_frame(
                same.handle.endpoint.vnc_host,
                same.handle.endpoint.vnc_port,
                same.handle.secrets.vnc_password,
            )
            == SCREEN
        )

        # A container killed behind its back is reported lost, with what the engine saw.
        engine.client.containers.get(same.handle.ref).kill()
        await pool2.check()
        lost = [e for e in events if isinstance(e, SandboxLost)]
        assert [(e.sandbox_id, e.session_id) for e in lost] == [(same.handle.sandbox_id, "kept")]
        assert "code 137" in lost[0].reason
    # The pool stopped its desktops; the session's home stays until deleted.
    assert engine.containers() == []
    assert engine.volumes() == [kept.handle.home]
    assert await again.delete_home("kept")
    assert engine.volumes() == []
    await again.close()


async def test_a_missing_image_or_network_is_a_configuration_error(
    engine: Engine, tmp_path: Path
) -> None:
    backend, _state = engine.backend(tmp_path, network="selfagent-no-such-network")
    with pytest.raises(ConfigError, match="network selfagent-no-such-network"):
        await backend.open()
    await backend.close()
    backend = DockerBackend(StateStore(tmp_path), host=engine.host, image="selfagent/no-such:image")
    with pytest.raises(ConfigError, match="selfagent/no-such:image not found"):
        await backend.open()
    await backend.close()


async def test_a_container_that_does_not_come_up_leaves_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    # An image without a desktop: the container exits at once.
    backend, state = engine.backend(tmp_path, image="debian:bookworm-slim")
    await backend.open()
    async with running_pool(backend, state, warm=1, max_per_host=2) as (pool, events):
        await wait_until(
            lambda: any(isinstance(e, SandboxLost) for e in events), 60, "the failed warm start"
        )
        lost = next(e for e in events if isinstance(e, SandboxLost))
        assert lost.session_id is None
        assert "stopped while starting" in lost.reason
        with pytest.raises(SandboxStartFailed):
            await pool.lease("unlucky")
        await wait_until(
            lambda: any(isinstance(e, SandboxLost) and e.session_id == "unlucky" for e in events),
            10,
            "the failed cold start's event",
        )
        # Each failed start is gone entirely. (The warm pool's next attempt,
        # after its back-off, may be starting meanwhile: it is checked below,
        # once the pool has stopped.)
        lost_ids = {e.sandbox_id for e in events if isinstance(e, SandboxLost)}
        assert not [c for c in engine.containers() if any(sid in c for sid in lost_ids)]
        assert not [v for v in engine.volumes() if any(sid in v for sid in lost_ids)]
        assert "selfagent-home-unlucky" not in engine.volumes()
        assert not [f for f in state.sandbox_dir.iterdir() if f.stem in lost_ids]
        # A failing warm pool backs off instead of starting over and over.
        await asyncio.sleep(1.5)
        assert sum(isinstance(e, SandboxLost) for e in events) <= 4
    # Stopped: every start in flight has ended, and none left anything.
    assert engine.containers() == [] and engine.volumes() == []
    assert list(state.sandbox_dir.iterdir()) == []
    await backend.close()


async def test_without_a_host_name_the_engine_names_the_host(
    engine: Engine, tmp_path: Path
) -> None:
    # Not the provisioner container's own host name: that changes with every
    # restart, and a provisioner only adopts what carries its name.
    backend = DockerBackend(StateStore(tmp_path), host=None, image=IMAGE, network=engine.network)
    await backend.open()
    assert backend.host == tame_host(str(engine.client.info()["Name"]))
    await backend.close()
