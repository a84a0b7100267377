"""Gateway settings (env prefix ``GATEWAY_``; the NATS URL as for every service)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from selfagent.bus.settings import DesktopsMode, ServiceSettings, desktops_field

from .security import token_problem

# In a source checkout the page lives at the repository's top level; an
# installed gateway points GATEWAY_UI_DIR at wherever the image copied it.
_DEFAULT_UI_DIR = Path(__file__).resolve().parents[2] / "ui"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    token: SecretStr = Field(
        default=SecretStr(""),
        validate_default=True,
        validation_alias=AliasChoices("SELFAGENT_TOKEN", "GATEWAY_TOKEN"),
        description="Shared secret every request except /healthz must present; "
        "at least 128 bits (see security.token_problem).",
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)

    vnc_host: str = "127.0.0.1"
    vnc_port: int = Field(default=5901, ge=1, le=65535)
    vnc_password: SecretStr = SecretStr("")
    vnc_connect_timeout: float = Field(default=5.0, gt=0)

    novnc_dir: Path = Path("/usr/share/novnc")
    ui_dir: Path = _DEFAULT_UI_DIR

    # fixed: every session drives the one desktop at vnc_host:vnc_port (its
    # tasks name sandbox_id); per_session: each session has its own desktop
    # from the provisioner, leased when the session is created or its first
    # task starts.
    desktops: DesktopsMode = desktops_field("GATEWAY_")
    sandbox_id: str = "default"
    # A lease may wait for capacity (PROVISIONER_LEASE_WAIT) and then for a
    # desktop to start: the default covers both with the provisioner's defaults.
    lease_timeout: float = Field(default=150.0, gt=0)
    # Looking a desktop up (status, connect) is bookkeeping: a provisioner
    # slower than this is treated as absent so a session list never hangs.
    provisioner_timeout: float = Field(default=3.0, gt=0)
    # Releasing stops a desktop, which can take a while.
    release_timeout: float = Field(default=60.0, gt=0)
    # Files in and out of the fixed desktop (per-session desktops: from the
    # provisioner); a transfer's size limit and its longest pause.
    exec_url: str | None = None
    exec_token: SecretStr = SecretStr("")
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    file_timeout: float = Field(default=60.0, gt=0)
    chat_timeout: float = Field(default=600.0, gt=0, description="Seconds /api/chat waits")
    history_limit: int = Field(default=5000, ge=1, description="Events /events returns at most")
    # Guessing: after this many wrong tokens from one client (IPv6: one /64)
    # within the window, it gets 429 until the oldest one ages out.
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window: float = Field(default=60.0, gt=0)

    @field_validator("token")
    @classmethod
    def _token_strong(cls, value: SecretStr) -> SecretStr:
        problem = token_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value
