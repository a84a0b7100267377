"""What every service's ``Settings`` shares: ``.env``, and the NATS URL read the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
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

    The NATS settings are each read as ``<PREFIX>NATS_...`` if set, else the
    shared ``NATS_...``, else the default: one replica can be pointed
    elsewhere (or given its own identity) without touching the others. The
    credentials are the service's own NATS user and password (see
    ``selfagent.bus.auth``); ``NATS_TLS_CA`` is the certificate (PEM) that
    signed the server's, when the server speaks TLS with one this machine
    does not already trust.

    ``NATS_URL`` may list several servers of one cluster, comma-separated:
    the service connects to any of them and fails over to the others.
    ``NATS_REPLICAS`` is how many copies JetStream keeps of each stream and of
    the session bucket that this service declares (1 on a single server, 3
    on a three-node cluster); every service should be given the same.

    ``<PREFIX>METRICS_PORT`` serves the service's Prometheus figures on that
    port (0, the default: not served), on ``<PREFIX>METRICS_HOST`` (loopback
    unless a scraper elsewhere must reach it); see docs/operations.md.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    nats_url: str = DEFAULT_NATS_URL
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_tls_ca: str = ""
    nats_replicas: int = Field(default=1, ge=1, le=5)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The alias depends on the subclass's prefix, which a field declared
        # here cannot know; each subclass gets its own copy of the field.
        prefix = cls.model_config.get("env_prefix", "")
        for name in _NATS_FIELDS:
            variable = name.upper()
            cls.model_fields[name].validation_alias = AliasChoices(f"{prefix}{variable}", variable)
        cls.model_rebuild(force=True)

    def bus_auth(self) -> BusAuth:
        """Who this service is on the bus (empty: whatever the URL says, or nobody)."""
        return BusAuth(
            user=self.nats_user,
            password=self.nats_password.get_secret_value(),
            ca_file=self.nats_tls_ca,
            replicas=self.nats_replicas,
        )


_NATS_FIELDS = ("nats_url", "nats_user", "nats_password", "nats_tls_ca", "nats_replicas")


@dataclass(frozen=True)
class BusAuth:
    """How a service joins the bus: its NATS user and password, the CA that
    signed the server's TLS certificate, and the replica count of what it
    declares in JetStream (carried here because this is what every service
    already hands to ``make_broker``)."""

    user: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    replicas: int = 1
