"""Planner settings (env prefix ``PLANNER_``).

The LLM endpoint keeps the names of the original design: ``LLM_API_BASE_URL``,
``LLM_MODEL``, ``LLM_API_KEY``. ``GROUNDER_MODEL`` being set switches the
default mode to grounded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from selfagent.bus.settings import DesktopsMode, ServiceSettings, desktops_field


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PLANNER_")

    llm_api_base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        validation_alias=AliasChoices("LLM_API_BASE_URL", "PLANNER_LLM_API_BASE_URL"),
    )
    llm_model: str = Field(
        default="gpt-4o", validation_alias=AliasChoices("LLM_MODEL", "PLANNER_LLM_MODEL")
    )
    llm_api_key: SecretStr = Field(
        default=SecretStr("none"),
        validation_alias=AliasChoices("LLM_API_KEY", "PLANNER_LLM_API_KEY"),
    )
    grounder_model: str | None = Field(
        default=None, validation_alias=AliasChoices("GROUNDER_MODEL", "PLANNER_GROUNDER_MODEL")
    )

    # grounded: the model names targets in words and the grounder finds them;
    # direct: the model gives pixel coordinates itself. auto = grounded when a
    # grounding model is configured.
    mode: Literal["auto", "grounded", "direct"] = "auto"
    native_tools: bool = True
    # How the model is prompted and read (services/planner/families): tools is
    # our JSON computer tool; the others are computer-use models in their own
    # format. auto picks from LLM_MODEL; unknown names get tools.
    family: Literal[
        "auto", "tools", "uitars", "uitars-1.0", "qwen", "qwen2.5", "qwen3", "opencua", "seed"
    ] = "auto"
    # At start, one request with a small synthetic screenshot checks that the
    # family and the model's answer agree and that the endpoint takes images.
    canary: bool = True

    llm_timeout: float = Field(default=120.0, gt=0, description="Per LLM call, seconds")
    llm_max_attempts: int = Field(default=4, ge=1)
    llm_temperature: float = 0.0
    llm_max_tokens: int = 1024

    max_steps: int = Field(default=30, ge=1)
    max_wall_seconds: float = Field(default=1800.0, gt=0)
    max_tokens_per_task: int = Field(default=500_000, ge=1000)
    # Consecutive replies that yield no valid action before the task fails.
    max_invalid_replies: int = Field(default=3, ge=1)
    # Consecutive actions that fail to execute before the task fails.
    max_failed_actions: int = Field(default=5, ge=1)

    # Hand-over: a task stays unacknowledged in the work queue while it runs
    # (kept alive every ack_wait/3). If this planner dies, the queue gives the
    # task to another replica after `task_ack_wait` seconds, which resumes it
    # from the session state, unless it was submitted more than
    # `resume_window` seconds ago (then it fails with error code interrupted).
    task_ack_wait: float = Field(default=30.0, ge=1)
    resume_window: float = Field(default=600.0, ge=0)
    # With other replicas running, a killed planner's tasks are handed over
    # sooner: every replica names its tasks in a heartbeat each
    # `heartbeat_interval` seconds, and one that stays silent for
    # `peer_silence` seconds has its tasks handed back to the queue at once
    # by a survivor (see peers.py).
    heartbeat_interval: float = Field(default=1.0, gt=0)
    peer_silence: float = Field(default=3.5, gt=0)

    # Context: the last N screenshots go to the model as images, older steps as text.
    # `tools` family. append: requests grow by appending (what prefix caches
    # reuse), up to max_screenshots images, then drop back to the newest two.
    # sliding: the newest keep_screenshots, one dropped per step.
    screenshot_window: Literal["append", "sliding"] = "append"
    max_screenshots: int = Field(default=6, ge=3, le=20)
    keep_screenshots: int = Field(default=3, ge=1)
    # Screenshots are pre-resized to fit this box before they reach the model;
    # coordinates are scaled back in exactly one place (coords.py).
    model_image_max_width: int = 1280
    model_image_max_height: int = 800
    image_quality: int = Field(default=80, ge=1, le=100)
    # History: each step's screenshots (what the model saw, and after the
    # action) kept in the AGENT_SCREENS stream for replay and export, this
    # many days (0: none kept) and up to this many MiB (oldest go first).
    screenshot_retention_days: float = Field(default=7.0, ge=0)
    screenshot_store_mib: int = Field(default=2048, ge=16)

    # fixed: a task without its own sandbox_id runs on `sandbox_id`.
    # per_session: it runs on its session's desktop, leased from the provisioner.
    desktops: DesktopsMode = desktops_field("PLANNER_")
    sandbox_id: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Longest wait for a desktop: the provisioner's capacity wait (30 s by
    # default) plus a desktop start from scratch.
    lease_timeout: float = Field(default=150.0, gt=0)
    # An actuator that sends no heartbeat for this long while it holds an
    # action is taken for dead: the action's outcome is unknown, and the
    # model is told so instead of the task waiting out act_timeout.
    actuator_silence: float = Field(default=3.5, gt=0)
    # How long a task waits for a desktop that stopped answering (an
    # actuator restarting, a VNC link coming back) before it fails.
    desktop_wait: float = Field(default=30.0, gt=0)

    act_timeout: float = 120.0
    # An action may wait this long for a person's approval (the actuator's
    # policy timeout, 300 s by default, plus margin) on top of act_timeout.
    approval_wait: float = Field(default=330.0, ge=0)
    observe_timeout: float = 15.0
    ground_timeout: float = 90.0
    # A grounder replica that sends no heartbeat for this long while it holds
    # a grounding request is taken for dead and the request is asked again
    # (at most ground_attempts times in all, within ground_timeout).
    grounder_silence: float = Field(default=3.5, gt=0)
    ground_attempts: int = Field(default=3, ge=1, le=10)

    @property
    def resolved_mode(self) -> Literal["grounded", "direct"]:
        if self.mode == "auto":
            return "grounded" if self.grounder_model else "direct"
        return self.mode
