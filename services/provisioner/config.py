"""Provisioner settings (env prefix ``PROVISIONER_``; the NATS URL as every service reads it)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from selfagent.bus.settings import ServiceSettings


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "selfagent" / "provisioner"


def tame_host(name: str) -> str:
    # A label value and an event field, never a subject token; still keep it tame.
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:128] or "localhost"


def this_host() -> str:
    return tame_host(socket.gethostname())


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROVISIONER_")

    # `native` runs desktops as processes of this user (local mode); `docker`
    # runs each in its own container (the provisioner image sets it).
    backend: Literal["native", "docker"] = "native"
    # Names this provisioner's sandboxes (label `selfagent.host`): at start it
    # adopts or removes only what carries its own name, so it must not change
    # across restarts. Empty: the Docker engine's host name (docker), this
    # machine's (native); not the container's own, which is new each time.
    # With several hosts on one bus each must have its own: it names the
    # host's request subjects (agent.provisioner.<host>.<op>) and its events.
    host_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    # Sandbox records (secrets included, mode 0600) and, natively, the homes.
    data_dir: Path = Field(default_factory=_default_data_dir)

    screen_width: int = Field(
        default=1280,
        ge=320,
        le=7680,
        validation_alias=AliasChoices("PROVISIONER_SCREEN_WIDTH", "SCREEN_WIDTH"),
    )
    screen_height: int = Field(
        default=720,
        ge=200,
        le=4320,
        validation_alias=AliasChoices("PROVISIONER_SCREEN_HEIGHT", "SCREEN_HEIGHT"),
    )

    # The pool: `warm` desktops kept ready for the next new session (0: none),
    # at most `max_per_host` desktops of any kind, at most `max_starting`
    # starting at once (starting is the CPU-heavy part).
    warm: int = Field(default=1, ge=0)
    max_per_host: int = Field(default=4, ge=1)
    max_starting: int = Field(default=3, ge=1)
    # A lease that finds the host full waits this long, in arrival order, for a
    # desktop to be released, then is refused with the reason.
    lease_wait: float = Field(default=30.0, ge=0)
    # A leased desktop with no lease, connect or session event for this long
    # is released (its home kept). 0 never releases.
    idle_release: float = Field(default=1800.0, ge=0)
    # How often this host announces its capacity (HostCapacity) besides on
    # every change; a host silent for three intervals counts as gone.
    capacity_interval: float = Field(default=2.0, gt=0)
    # How often desktops are checked for being alive and idle.
    check_interval: float = Field(default=5.0, gt=0)
    # Longest wait for one desktop to show its panel.
    start_timeout: float = Field(default=90.0, gt=0)
    # None: what the backend suggests (containers keep running across a
    # provisioner restart and are adopted; native desktops stop with it).
    keep_on_stop: bool | None = None

    # -- docker backend --
    docker_image: str = "selfagent/sandbox:latest"
    # The desktop network: the one network sandboxes join (never the bus).
    docker_network: str = "selfagent-desktop"
    # How the endpoint names a container: its address on that network (works
    # from the host and from containers on it) or its name (DNS on the network).
    docker_address: Literal["ip", "name"] = "ip"
    docker_cpus: float = Field(default=1.0, gt=0)
    docker_memory: str = Field(default="1g", pattern=r"^[0-9]+[bkmg]?$")
    docker_pids: int = Field(default=512, ge=64)
    docker_shm: str = Field(default="512m", pattern=r"^[0-9]+[bkmg]?$")
    # How readiness is probed: `docker exec` in the container, or (behind the
    # filtering Docker proxy, which refuses exec) the desktop's own exec
    # endpoint over the desktop network, which the provisioner must then join.
    docker_ready_probe: Literal["exec", "endpoint"] = "exec"
    # The desktop's HTTP(S) proxy (its network has no other way out), given
    # to it as HTTP_PROXY/HTTPS_PROXY; the image's Firefox uses it. Empty: none.
    docker_proxy: str = Field(default="", pattern=r"^(https?://[A-Za-z0-9_.:\[\]-]+/?)?$")
    # Seconds `docker stop` gives the desktop to close its programs.
    docker_stop_timeout: int = Field(default=3, ge=0)

    # -- native backend --
    # Where start.sh lives; empty: the checkout's sandbox/ (or SELFAGENT_SANDBOX_DIR).
    sandbox_dir: Path | None = None

    @field_validator("docker_memory", "docker_shm", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
