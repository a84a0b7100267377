"""Actuator settings (env prefix ``ACTUATOR_``; the NATS URL as for every service)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from selfagent.bus.settings import DesktopsMode, ServiceSettings, desktops_field


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ACTUATOR_")

    # fixed: serve the one desktop below (sandbox_id, vnc_*, exec_*).
    # per_session: serve every desktop the provisioner leases.
    desktops: DesktopsMode = desktops_field("ACTUATOR_")
    sandbox_id: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Per-session desktops with several provisioner hosts: the host this
    # actuator runs on (its provisioner's PROVISIONER_HOST_NAME). It then
    # serves only that host's desktops and leaves the others' requests to
    # their own actuators. None: every leased desktop, whichever host runs it.
    host: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    # Per-session desktops: how long the provisioner may take to say how to
    # reach a desktop, and how often leases are checked for missed releases.
    connect_timeout: float = Field(default=5.0, gt=0)
    reconcile_interval: float = Field(default=10.0, gt=0)
    # Planners watch this to notice an actuator that died mid-action.
    heartbeat_interval: float = Field(default=1.0, gt=0)

    vnc_host: str = "127.0.0.1"
    vnc_port: int = 5901
    vnc_password: SecretStr | None = None
    vnc_connect_timeout: float = 5.0
    # How often to retry a lost VNC link; 0.5 s keeps us within the promise of
    # being back within 5 s of the server.
    vnc_retry_interval: float = 0.5
    # How long an action waits for a VNC link that is reconnecting before it
    # fails with a clear error (it is never queued for later).
    vnc_wait_for_link: float = 2.0

    exec_url: str | None = None
    exec_token: SecretStr | None = None
    exec_timeout_margin: float = 5.0

    # Settling: the screen counts as settled after `settle_quiet` seconds with
    # no framebuffer change, never waiting longer than `settle_max`. Actions
    # that usually start something slow (launching, key combos, Return) first
    # wait up to `settle_expect_change` for the screen to start changing.
    settle_quiet: float = 0.1
    settle_max: float = 5.0
    settle_expect_change: float = 1.5

    # The approval policy (TOML, see policy.py); none: the built-in rules.
    policy_file: Path | None = None

    type_chunk_chars: int = 64
    idempotency_cache: int = 2048
