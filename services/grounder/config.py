"""Grounder settings (env prefix ``GROUNDER_``; the NATS URL as for every service)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from selfagent.bus.settings import ServiceSettings

FamilyName = Literal[
    "auto",
    "ocr",
    "os-atlas",
    "ui-tars-1.0",
    "ui-tars-1.5",
    "qwen2.5-vl",
    "qwen3-vl",
    "uground",
    "showui",
    "gta1",
    "holo",
    "jedi",
    "opencua",
    "json",
]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GROUNDER_")

    api_base_url: str = ""
    model: str = ""
    api_key: str = ""
    # "auto" picks the family from the model name; "ocr" uses no model at all
    # (also what an empty api_base_url or model falls back to).
    family: FamilyName = "auto"
    timeout: float = Field(default=30.0, gt=0, description="Seconds per model call")
    retries: int = Field(default=2, ge=0, le=10)
    deadline: float = Field(default=60.0, gt=0, description="Seconds per request, all retries")
    min_pixels: int | None = Field(default=None, gt=0)
    max_pixels: int | None = Field(default=None, gt=0)
    canary: bool = True
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight per replica")
    heartbeat_interval: float = Field(default=1.0, gt=0)
    ocr_timeout: float = Field(default=20.0, gt=0)
    ocr_min_score: float = Field(default=0.75, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError("GROUNDER_MIN_PIXELS must not exceed GROUNDER_MAX_PIXELS")
        return self

    @property
    def uses_model(self) -> bool:
        return self.family != "ocr" and bool(self.api_base_url) and bool(self.model)
