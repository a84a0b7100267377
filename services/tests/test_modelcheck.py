"""What the start-up check says about a model endpoint, against a real HTTP server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from selfagent.modelcheck import check_endpoint, reachable_url, shown
from tests.harness.fakellm import FakeLLM


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


async def test_an_endpoint_serving_the_model_is_fine(server: FakeLLM) -> None:
    report = await check_endpoint(server.base_url, "fake-planner", "sk-secret", containerized=False)
    assert report.ok and report.reachable and report.model_listed
    assert report.models == ["fake", "fake-planner"]
    assert "answers; it lists: fake, fake-planner" in report.lines()[0]
    assert "sk-secret" not in " ".join(report.lines())


async def test_a_model_the_endpoint_does_not_list_names_the_setting(server: FakeLLM) -> None:
    report = await check_endpoint(server.base_url, "gpt-9", None, containerized=False)
    assert report.reachable and report.model_listed is False and not report.ok
    assert report.lines()[1] == "LLM_MODEL 'gpt-9' is not among them: check LLM_MODEL"


async def test_an_empty_model_is_a_warning(server: FakeLLM) -> None:
    report = await check_endpoint(server.base_url, "", None, containerized=False)
    assert not report.ok
    assert any("LLM_MODEL is empty" in line for line in report.lines())


async def test_nothing_listening_names_the_url_and_the_setting() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    report = await check_endpoint(url, "m", None, prefix="GROUNDER_", containerized=False)
    assert not report.reachable and not report.ok
    line = report.lines()[0]
    assert url in line and "does not answer" in line and "check GROUNDER_API_BASE_URL" in line


async def test_docker_only_names_outside_docker_are_pointed_out(server: FakeLLM) -> None:
    url = "http://host.docker.internal:9/v1"
    report = await check_endpoint(url, "m", None, timeout=1.0, containerized=False)
    assert any("exists only inside Docker" in line for line in report.lines())


def test_loopback_in_a_service_container_means_the_host() -> None:
    url, note = reachable_url("http://127.0.0.1:8000/v1", containerized=True)
    assert url == "http://host.docker.internal:8000/v1"
    assert note is not None and "this container itself" in note
    assert reachable_url("http://127.0.0.1:8000/v1", containerized=False) == (
        "http://127.0.0.1:8000/v1",
        None,
    )
    assert reachable_url("https://api.example.test/v1", containerized=True)[1] is None


def test_credentials_in_a_url_are_never_shown() -> None:
    assert shown("http://user:hunter2@models.test:8000/v1") == "http://models.test:8000/v1"
    assert shown("http://models.test/v1") == "http://models.test/v1"
