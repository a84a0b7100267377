"""What every service's ``Settings`` shares: ``.env``, and the NATS URL read the same way."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

DesktopsMode = Literal["fixed", "per_session"]
"""How tasks get a desktop.

``fixed``: every task runs on one configured desktop (``sandbox_id``, by
default ``default``), served by an actuator set up for it. ``per_session``:
each session leases its own desktop from the provisioner, and one actuator
serves every leased desktop. Planner, actuator and gateway must agree; they
read ``SELFAGENT_DESKTOPS`` unless their own ``<PREFIX>DESKTOPS`` says otherwise.
"""


def desktops_field(prefix: str) -> Any:
    return Field(
        default="fixed",
        validation_alias=AliasChoices(f"{prefix}DESKTOPS", "SELFAGENT_DESKTOPS"),
        description="fixed: one configured desktop; per_session: one leased per session",
    )


class ServiceSettings(BaseSettings):
    """Base of each service's ``Settings`` (which sets ``env_prefix``, e.g. ``PLANNER_``).

    The NATS URL is ``<PREFIX>NATS_URL`` if set, else the shared ``NATS_URL``,
    else the default: one replica can be pointed elsewhere without touching
    the others.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    nats_url: str = DEFAULT_NATS_URL

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The alias depends on the subclass's prefix, which a field declared
        # here cannot know; each subclass gets its own copy of the field.
        prefix = cls.model_config.get("env_prefix", "")
        cls.model_fields["nats_url"].validation_alias = AliasChoices(
            f"{prefix}NATS_URL", "NATS_URL"
        )
        cls.model_rebuild(force=True)
