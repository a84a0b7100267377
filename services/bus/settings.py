"""What every service's ``Settings`` shares: ``.env``, and the NATS URL read the same way."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


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
