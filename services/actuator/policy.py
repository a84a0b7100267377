"""The approval policy: allow, ask or deny each action, outside the model's reach.

The actuator applies it to every action it is asked to run, whoever asked,
so a planner that ignores it, or a message published straight onto the act
subject, cannot get past it. The operator's file (TOML, ``ACTUATOR_POLICY_FILE``)
replaces the built-in rules below; it is validated at start.

    mode = "ask"            # the default mode of a session: ask | autonomous | review-all
    timeout = 300           # seconds to wait for a person; no answer is a deny
    allow_domains = []      # when set, open_url to any other domain asks

    [[rules]]
    name = "recursive removal"
    actions = ["shell", "type"]   # typed into a terminal is the same command
    pattern = '\\brm\\s+-\\S*[rR]'
    decision = "ask"              # or "deny": never run, whatever the mode

The first matching rule decides; nothing matching is allowed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selfagent.errors import ConfigError
from selfagent.schemas.actions import Action, OpenUrlAction
from selfagent.schemas.messages import ApprovalMode

Decision = Literal["allow", "ask", "deny"]
Gated = Literal["shell", "type", "open_url"]
# The actions whose text a rule's pattern reads, and the field that holds it.
_TEXT_OF: dict[str, str] = {"shell": "command", "type": "text", "open_url": "url"}

# Shell commands that destroy or send data away. Matched on the command line
# (and on typed text, which a terminal turns into one).
DEFAULT_RULES: list[dict[str, object]] = [
    {"name": "recursive removal", "pattern": r"\brm\s+(?:-\S*\s+)*-\S*[rR]|\brm\s+.*--recursive"},
    {"name": "raw disk write (dd)", "pattern": r"(?:^|[;&|\s])dd\s+\S*(?:if|of)="},
    {"name": "making a filesystem", "pattern": r"\bmkfs(?:\.\w+)?\b"},
    {
        "name": "recursive chmod or chown",
        "pattern": r"\bch(?:mod|own|grp)\s+(?:-\S*\s+)*(?:-\S*R|--recursive)",
    },
    {"name": "sudo or su", "pattern": r"(?:^|[;&|(`$\s])(?:sudo|su|doas|pkexec)(?:\s|$)"},
    {
        "name": "download piped into a shell",
        "pattern": r"\b(?:curl|wget)\b[^|]*\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b",
    },
    {
        "name": "upload",
        "pattern": r"\b(?:scp|rsync|sftp|ftp)\s|\bcurl\b.*\s(?:-T|--upload-file|-F|--form|-d|"
        r"--data\S*)\s|\bwget\b.*--post-(?:data|file)",
    },
    # Options may take arguments (git -C dir push): any words between.
    {"name": "git push", "pattern": r"\bgit\b[^;&|\n]*\spush\b"},
    {
        "name": "package install",
        "pattern": r"\b(?:apt|apt-get|aptitude|dnf|yum|zypper|pacman|apk|snap|flatpak|pip3?|pipx|"
        r"npm|pnpm|yarn|gem|cargo|go)\s+(?:-\S*\s+)*(?:install|add|-S)\b",
    },
]


_COMMANDS: list[Gated] = ["shell", "type"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    actions: list[Gated] = Field(default_factory=lambda: _COMMANDS.copy(), min_length=1)
    pattern: str = Field(min_length=1, max_length=2_000)
    decision: Literal["ask", "deny"] = "ask"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    def matches(self, action: Action) -> bool:
        if action.action not in self.actions:
            return False
        text = getattr(action, _TEXT_OF[action.action], "")
        return re.search(self.pattern, text, re.IGNORECASE | re.MULTILINE) is not None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: ApprovalMode = "ask"
    timeout: float = Field(default=300.0, gt=0, le=86_400)
    allow_domains: list[str] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=lambda: [Rule(**rule) for rule in DEFAULT_RULES])

    def decide(self, action: Action, mode: ApprovalMode) -> tuple[Decision, str]:
        """The decision for one action in a session's mode, and why (the rule's name)."""
        for rule in self.rules:
            if rule.matches(action):
                if rule.decision == "deny":
                    return "deny", rule.name
                if mode != "autonomous":
                    return "ask", rule.name
                return "allow", rule.name
        if isinstance(action, OpenUrlAction) and self.allow_domains and mode != "autonomous":
            host = (urlsplit(action.url).hostname or "").lower()
            if not any(host == d or host.endswith("." + d) for d in self._domains):
                return "ask", f"open_url outside the allowed domains ({host or 'no host'})"
        if mode == "review-all" and action.action not in _NEVER_ASKED:
            return "ask", "review-all: every action is reviewed"
        return "allow", ""

    @property
    def _domains(self) -> list[str]:
        return [domain.lower().lstrip(".") for domain in self.allow_domains]


# Reading the screen changes nothing; asking about it would only slow a review.
_NEVER_ASKED = frozenset({"screenshot", "cursor_position", "wait", "done", "fail"})


def load_policy(path: Path | None) -> Policy:
    """The operator's policy file, or the built-in rules when there is none.

    Raises:
        ConfigError: the file is missing, not TOML, or not a valid policy.
    """
    if path is None:
        return Policy()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the approval policy {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the approval policy {path} is not valid TOML: {exc}") from exc
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'policy'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"the approval policy {path} is invalid: {problems}") from exc

