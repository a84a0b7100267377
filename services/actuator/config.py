"""Actuator settings (env prefix ``ACTUATOR_``; the NATS URL as for every service)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from selfagent.bus.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ACTUATOR_")

    sandbox_id: str = "default"

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

    type_chunk_chars: int = 64
    idempotency_cache: int = 2048
