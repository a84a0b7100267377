"""Fixtures for the cross-service tests: a fake LLM and the real local stack."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from selfagent.local import LocalStack
from tests.harness.fakellm import FakeLLM

LAUNCHER_SECRET = "sk-launcher-secret-must-not-leak"


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(fake_llm: FakeLLM) -> Iterator[LocalStack]:
    """NATS + native sandbox + planner, grounder, actuator, gateway as processes."""
    from selfagent.bus.natsd import free_port

    local = LocalStack(
        desktops="fixed",
        gateway_port=free_port(),
        token=secrets.token_urlsafe(24),
        extra_env={
            "LLM_API_BASE_URL": fake_llm.base_url,
            "LLM_MODEL": "fake-planner",
            "LLM_API_KEY": "sk-test",
            "GROUNDER_FAMILY": "ocr",
            "GROUNDER_CANARY": "false",
            "PLANNER_CANARY": "false",
            "PLANNER_LLM_TIMEOUT": "5",
            "PLANNER_LLM_MAX_ATTEMPTS": "2",
        },
    )
    # A secret in the launching environment, as `selfagent up` has after
    # reading .env: the sandbox must not inherit it (test_sandbox_sees_no_secrets).
    previous = os.environ.get("LLM_API_KEY")
    os.environ["LLM_API_KEY"] = LAUNCHER_SECRET
    try:
        local.start()
    finally:
        if previous is None:
            del os.environ["LLM_API_KEY"]
        else:
            os.environ["LLM_API_KEY"] = previous
    yield local
    local.stop(remove=True)


@pytest.fixture
def llm(fake_llm: FakeLLM) -> FakeLLM:
    fake_llm.reset()
    return fake_llm
