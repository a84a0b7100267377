"""docker-compose.yml: what it lets talk to what, and a real `up` of the stack."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from selfagent.bus.auth import (
    ADMIN,
    AUTOMATION,
    SERVICE_IDENTITIES,
    ClientCredentials,
    write_deployment,
)
from tests.harness import prebuild
from tests.harness.docker import ROOT, compose_command, require_engine, run
from tests.harness.fakellm import FakeLLM, tool_call

pytestmark = pytest.mark.docker

SECRETS = ("SELFAGENT_TOKEN",)
REQUIRED = (*SECRETS, "LLM_API_BASE_URL", "LLM_MODEL")
SERVICES = {
    "nats",
    "sandbox",
    "docker-proxy",
    "provisioner",
    "egress-proxy",
    "planner",
    "grounder",
    "actuator",
    "gateway",
}
# Secrets of the desktops: the provisioner makes one pair per desktop; no
# service is given any in its environment.
DESKTOP_SECRETS = {
    "VNC_PASSWORD",
    "SANDBOX_EXEC_TOKEN",
    "ACTUATOR_VNC_PASSWORD",
    "ACTUATOR_EXEC_TOKEN",
    "GATEWAY_VNC_PASSWORD",
}


def _env_file(path: Path, **values: str) -> Path:
    text = (ROOT / ".env.example").read_text()
    for key, value in values.items():
        text, count = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        if count == 0:
            text += f"\n{key}={value}\n"
    path.write_text(text)
    return path


def _clean_env() -> dict[str, str]:
    # Compose also interpolates from the process environment; only the env
    # file under test may supply values.
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "LANG")
    return {k: v for k, v in os.environ.items() if k in keep}


def _secrets() -> str:
    """A directory with the NATS identities, as `selfagent nats-credentials` writes them."""
    directory = Path(tempfile.mkdtemp(prefix="selfagent-compose-secrets-"))
    write_deployment(directory / "nats")
    return str(directory)


def _complete_values() -> dict[str, str]:
    return {
        "LLM_API_BASE_URL": "http://127.0.0.1:9/v1",
        "LLM_MODEL": "fake-model",
        "SELFAGENT_TOKEN": "gw-" + secrets.token_urlsafe(24),
        "SELFAGENT_SECRETS": _secrets(),
    }


def _compose(env_file: Path, *args: str, timeout: float = 120, check: bool = True) -> Any:
    return run(
        [
            *compose_command(),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            *args,
        ],
        env=_clean_env(),
        cwd=ROOT,
        timeout=timeout,
        check=check,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_engine()
    env_file = _env_file(tmp_path_factory.mktemp("compose") / "env", **_complete_values())
    parsed = yaml.safe_load(_compose(env_file, "config").stdout)
    assert isinstance(parsed, dict)
    return parsed


def _networks(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    return set(networks)


def test_config_validates_with_all_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES


@pytest.mark.parametrize("missing", REQUIRED)
def test_refuses_to_start_without_required_values(tmp_path: Path, missing: str) -> None:
    require_engine()
    values = _complete_values()
    values[missing] = ""
    result = _compose(_env_file(tmp_path / "env", **values), "config", check=False)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stdout + result.stderr


def test_only_the_gateway_and_nats_publish_a_port(config: dict[str, Any]) -> None:
    published = {name for name, svc in config["services"].items() if svc.get("ports")}
    # NATS for automation clients (docs/automation.md), behind its credentials.
    assert published == {"gateway", "nats"}
    for name, target in (("gateway", 8080), ("nats", 4222)):
        (port,) = config["services"][name]["ports"]
        text = (
            str(port)
            if not isinstance(port, dict)
            else f"{port.get('host_ip')}:{port['published']}"
        )
        # Loopback unless the user opts in to exposing it on the network.
        assert text.startswith("127.0.0.1:"), (name, text)
        assert isinstance(port, str) or int(port["target"]) == target


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume, in either of compose's spellings."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found.append(
                (str(volume.get("source", "")), volume["target"], bool(volume.get("read_only")))
            )
        else:
            parts = str(volume).split(":")
            found.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return found


def test_refuses_to_start_without_nats_credentials(tmp_path: Path) -> None:
    require_engine()
    values = _complete_values() | {"SELFAGENT_SECRETS": str(tmp_path / "none-written")}
    result = _compose(_env_file(tmp_path / "env", **values), "config", check=False)
    assert result.returncode != 0
    assert "none-written/nats/" in result.stdout + result.stderr


def test_each_service_has_its_own_nats_identity(config: dict[str, Any]) -> None:
    services = config["services"]
    passwords = {}
    for name in SERVICE_IDENTITIES:
        env = services[name]["environment"]
        assert env["NATS_USER"] == name
        passwords[name] = env["NATS_PASSWORD"]
    assert len(set(passwords.values())) == len(passwords) and all(passwords.values())
    # The automation and admin passwords are in no container.
    secrets_dir = Path(
        next(m[0] for m in _mounts(services["nats"]) if m[0].endswith("auth.conf"))
    ).parent
    for identity in (AUTOMATION, ADMIN):
        password = ClientCredentials.read(secrets_dir / f"{identity}.env").password
        for name, svc in services.items():
            assert password not in json.dumps(svc.get("environment") or {}), (identity, name)
    for name in ("sandbox", "docker-proxy"):
        assert not {"NATS_USER", "NATS_PASSWORD"} & set(services[name].get("environment") or {})


def test_sandbox_is_not_on_the_bus(config: dict[str, Any]) -> None:
    services = config["services"]
    on_bus = {name for name, svc in services.items() if "bus" in _networks(svc)}
    on_desktop = {name for name, svc in services.items() if "desktop" in _networks(svc)}
    on_docker_api = {name for name, svc in services.items() if "docker-api" in _networks(svc)}
    assert on_bus == {"nats", "planner", "grounder", "actuator", "gateway", "provisioner"}
    # The provisioner probes each new desktop's readiness over it.
    # The egress proxy is the desktops' only way out.
    assert on_desktop == {"actuator", "gateway", "provisioner", "egress-proxy"}
    desktop_net = config["networks"]["desktop"]
    assert desktop_net.get("internal") is True
    assert desktop_net["driver_opts"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert _networks(services["egress-proxy"]) == {"desktop", "egress"}
    assert services["egress-proxy"]["cap_drop"] == ["ALL"]
    env = services["provisioner"]["environment"]
    assert env["PROVISIONER_DOCKER_PROXY"] == "http://egress-proxy:3128"
    assert on_docker_api == {"docker-proxy", "provisioner"}
    assert _networks(services["docker-proxy"]) == {"docker-api"}
    assert config["networks"]["docker-api"].get("internal") is True
    for name, svc in services.items():
        assert svc.get("network_mode") is None, f"{name} sets network_mode"
    # Sandboxes are the provisioner's containers, on the desktop network by its fixed name.
    desktop = config["networks"]["desktop"]["name"]
    assert services["provisioner"]["environment"]["PROVISIONER_DOCKER_NETWORK"] == desktop
    assert services["docker-proxy"]["environment"]["DOCKER_PROXY_NETWORK"] == desktop


def test_the_sandbox_service_only_builds_the_image(config: dict[str, Any]) -> None:
    sandbox = config["services"]["sandbox"]
    assert sandbox["build"]["dockerfile"] == "sandbox/Dockerfile"
    assert sandbox["image"] == "selfagent/sandbox:latest"
    assert sandbox["scale"] == 0
    assert not sandbox.get("environment") and not sandbox.get("ports")
    provisioner = config["services"]["provisioner"]["environment"]
    assert provisioner["PROVISIONER_DOCKER_IMAGE"] == sandbox["image"]
    assert (
        config["services"]["docker-proxy"]["environment"]["DOCKER_PROXY_IMAGE"]
        == (sandbox["image"])
    )


def test_only_the_docker_proxy_has_the_docker_socket(config: dict[str, Any]) -> None:
    with_socket = set()
    for name, svc in config["services"].items():
        for volume in svc.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume)
            target = volume.get("target", "") if isinstance(volume, dict) else str(volume)
            if "docker.sock" in source or "docker.sock" in target:
                with_socket.add(name)
        assert not svc.get("privileged"), f"{name} is privileged"
        assert svc.get("pid") is None and not svc.get("cap_add"), name
    assert with_socket == {"docker-proxy"}
    proxy = config["services"]["docker-proxy"]
    assert proxy["read_only"] is True
    assert "no-new-privileges:true" in proxy["security_opt"]
    assert proxy["cap_drop"] == ["ALL"]
    assert proxy["command"] == ["python", "-m", "selfagent.provisioner.socket_proxy"]
    # The provisioner reaches the engine through the proxy only.
    provisioner = config["services"]["provisioner"]
    assert provisioner["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert provisioner["depends_on"]["docker-proxy"]["condition"] == "service_healthy"


def test_the_provisioner_runs_a_warm_pool_and_leaves_nothing_at_down(
    config: dict[str, Any],
) -> None:
    provisioner = config["services"]["provisioner"]
    env = provisioner["environment"]
    assert env["PROVISIONER_WARM"] == "1"
    assert env["PROVISIONER_KEEP_ON_STOP"] == "false"
    assert env["PROVISIONER_DOCKER_READY_PROBE"] == "endpoint"
    # Compose's default 10 s would SIGKILL it while it stops the desktops.
    grace = str(provisioner["stop_grace_period"])
    assert re.fullmatch(r"[0-9]+s", grace) and int(grace[:-1]) >= 30, grace
    for name in ("planner", "actuator", "gateway"):
        assert config["services"][name]["environment"]["SELFAGENT_DESKTOPS"] == "per_session"


def test_grounder_can_scale(config: dict[str, Any]) -> None:
    grounder = config["services"]["grounder"]
    assert "container_name" not in grounder
    assert not grounder.get("ports")


def test_secrets_reach_only_the_services_that_use_them(config: dict[str, Any]) -> None:
    env = {name: set(svc.get("environment") or {}) for name, svc in config["services"].items()}
    assert not env["sandbox"]
    assert not env["planner"] & {"SELFAGENT_TOKEN"}
    assert not env["grounder"] & {"LLM_API_KEY"}
    assert not env["provisioner"] & {"LLM_API_KEY", "SELFAGENT_TOKEN", "GROUNDER_API_KEY"}
    assert env["docker-proxy"] == {"DOCKER_PROXY_IMAGE", "DOCKER_PROXY_NETWORK"}
    for name, names in env.items():
        assert not names & DESKTOP_SECRETS, name
    assert "SELFAGENT_TOKEN" in env["gateway"]


def test_dependencies_wait_for_nats_and_the_engine(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("planner", "grounder", "actuator", "gateway", "provisioner"):
        assert "nats" in services[name]["depends_on"]
        assert "sandbox" not in (services[name].get("depends_on") or {}), name
    assert services["provisioner"]["depends_on"]["docker-proxy"]["condition"] == "service_healthy"
    assert "provisioner" in services["planner"]["depends_on"]


def test_nats_has_jetstream_and_a_screenshot_sized_payload(config: dict[str, Any]) -> None:
    nats = config["services"]["nats"]
    conf_mount = next(v for v in nats["volumes"] if "nats.conf" in str(v))
    source = conf_mount["source"] if isinstance(conf_mount, dict) else str(conf_mount).split(":")[0]
    text = Path(source).read_text()
    assert re.search(r"(?m)^jetstream\s*\{", text)
    from selfagent.bus import MAX_PAYLOAD

    assert f"max_payload: {MAX_PAYLOAD}" in text
    # No monitoring port; the generated authorization config is included and mounted.
    assert "http_port" not in text and "http:" not in text
    assert re.search(r"(?m)^include \./auth\.conf$", text)
    mounts = _mounts(nats)
    auth = next(m for m in mounts if m[0].endswith("auth.conf"))
    assert auth[1:] == ("/etc/nats/auth.conf", True)
    assert "/data" in {target for _, target, _ in mounts}


SERVICE_IMAGES = ("planner", "grounder", "actuator", "gateway")


@pytest.mark.parametrize("service", (*SERVICE_IMAGES, "provisioner"))
def test_service_dockerfiles(service: str) -> None:
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    assert re.search(r"(?m)^FROM debian:bookworm-slim$", text)
    user = re.findall(r"(?m)^USER (\S+)$", text)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    if service != "gateway":  # the gateway checks its own /healthz
        assert f'CMD ["python", "-m", "selfagent.bus.healthcheck", "{service}"]' in text
    # Third-party dependencies are a layer of their own, before the source.
    dependencies = text.index("pip install -r /tmp/requirements.txt")
    assert text.index("COPY pyproject.toml ./") < dependencies < text.index("COPY services ")
    assert f'CMD ["python", "-m", "selfagent.{service}"]' in text


def test_service_dockerfiles_share_one_shape() -> None:
    """Up to USER, the four differ only in their name and their system packages."""

    def shape(service: str) -> str:
        text = (ROOT / "services" / service / "Dockerfile").read_text()
        text = text[text.index("FROM ") : text.index("USER ")]
        text = re.sub(r"apt-get install -y --no-install-recommends .*", "apt-get install", text)
        return text.replace(service, "SERVICE")

    shapes = {service: shape(service) for service in SERVICE_IMAGES}
    assert len(set(shapes.values())) == 1, shapes


def test_compose_does_not_repeat_the_images_health_checks(config: dict[str, Any]) -> None:
    for name in (*SERVICE_IMAGES, "provisioner"):
        assert "healthcheck" not in config["services"][name], name


# --- the real stack ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def compose_llm() -> Iterator[FakeLLM]:
    """The scripted LLM, reachable from the planner container through the host gateway."""
    server = FakeLLM(host="0.0.0.0").start()
    yield server
    server.stop()


Stack = tuple[Path, str, dict[str, str]]


def _sandboxes(stack: Stack, *labels: str) -> list[str]:
    """Ids of this stack's desktop containers (the provisioner's, not compose's)."""
    desktop = stack[2]["DESKTOP_NETWORK"]
    filters = [
        "--filter",
        "label=selfagent.sandbox=1",
        "--filter",
        f"label=selfagent.host={desktop}",
    ]
    for label in labels:
        filters += ["--filter", f"label={label}"]
    return run(["docker", "ps", "-aq", "--no-trunc", *filters]).stdout.split()


def _inspect(container_id: str) -> dict[str, Any]:
    found = json.loads(run(["docker", "inspect", container_id]).stdout)
    assert isinstance(found, list) and len(found) == 1
    return dict(found[0])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, compose_llm: FakeLLM) -> Iterator[Stack]:
    require_engine()
    values = _complete_values() | {
        "GATEWAY_PORT": str(_free_port()),
        "NATS_PORT": str(_free_port()),
        "LLM_API_BASE_URL": f"http://host.docker.internal:{compose_llm.port}/v1",
        # The start-up canary would take the first scripted reply.
        "PLANNER_CANARY": "false",
        # Its own desktop network (and so its own label on its desktops).
        "DESKTOP_NETWORK": f"selfagent-e2e-desktop-{uuid.uuid4().hex[:8]}",
    }
    env_file = _env_file(tmp_path_factory.mktemp("stack") / "env", **values)
    project = f"selfagent-e2e-{uuid.uuid4().hex[:8]}"
    # The images were built in the background while other tests ran; compose
    # reuses their layers.
    prebuild.wait_all(timeout=1800)
    started = time.monotonic()
    found: Stack = (env_file, project, values)
    try:
        _compose(env_file, "-p", project, "up", "-d", "--build", timeout=1800)
        print(f"\ncompose up --build: {time.monotonic() - started:.0f} s")
        yield found
    finally:
        logs = _compose(env_file, "-p", project, "logs", "--no-color", "--tail", "40", check=False)
        print(logs.stdout[-6000:])
        _compose(
            env_file, "-p", project, "down", "-v", "--remove-orphans", timeout=300, check=False
        )
        # What a failed test left: desktops, and the homes sessions keep after `down`.
        label = f"label=selfagent.host={values['DESKTOP_NETWORK']}"
        for container_id in _sandboxes(found):
            run(["docker", "rm", "-f", container_id], check=False)
        for volume in run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split():
            run(["docker", "volume", "rm", "-f", volume], check=False)
        run(["docker", "network", "rm", values["DESKTOP_NETWORK"]], check=False)


def _exec_in(stack: Stack, service: str, code: str) -> Any:
    env_file, project, _ = stack
    return _compose(
        env_file, "-p", project, "exec", "-T", service, "python", "-c", code, check=False
    )


def _exec_in_sandbox(container_id: str, code: str) -> Any:
    return run(["docker", "exec", container_id, "python3", "-c", code], check=False)


def _warm_sandbox(stack: Stack, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container_id in _sandboxes(stack):
            if _inspect(container_id)["State"]["Running"]:
                return container_id
        time.sleep(1)
    pytest.fail("the provisioner started no desktop (its warm pool)")


def test_stack_gateway_answers_on_the_published_port(stack: Stack) -> None:
    port = stack[2]["GATEWAY_PORT"]
    deadline = time.monotonic() + 180
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            last = f"{response.status_code} {response.text[:200]}"
            if response.status_code == 200:
                break
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(1)
    else:
        pytest.fail(f"gateway /healthz never answered 200 on port {port}: {last}")
    # Everything else needs the token.
    assert httpx.get(f"http://127.0.0.1:{port}/api/takeover", timeout=5).status_code in (401, 403)


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1] if len(sys.argv) > 1 else 'nats', 4222), timeout=5)"
    ".recv(4)\n"
    "except OSError as exc:\n"
    "    print('blocked', type(exc).__name__, exc)\n"
    "else:\n"
    "    print('reached')\n"
)


def test_stack_nats_reachable_from_actuator_not_from_sandbox(stack: Stack) -> None:
    env_file, project, _ = stack
    from_actuator = _exec_in(stack, "actuator", CONNECT)
    assert from_actuator.stdout.strip() == "reached", from_actuator.stdout + from_actuator.stderr
    sandbox = _warm_sandbox(stack)
    from_sandbox = _exec_in_sandbox(sandbox, CONNECT)
    assert from_sandbox.stdout.startswith("blocked"), from_sandbox.stdout + from_sandbox.stderr
    # Not by name, and not by address either.
    nats_id = _compose(env_file, "-p", project, "ps", "-q", "nats").stdout.strip()
    address = run(
        [
            "docker",
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            nats_id,
        ]
    ).stdout.split()[0]
    code = CONNECT.replace("sys.argv[1] if len(sys.argv) > 1 else 'nats'", repr(address))
    by_address = _exec_in_sandbox(sandbox, code)
    assert by_address.stdout.startswith("blocked"), by_address.stdout + by_address.stderr
    # Nor the Docker proxy: it is on a network no desktop joins.
    to_proxy = _exec_in_sandbox(
        sandbox, code.replace(", 4222)", ", 2375)").replace(repr(address), "'docker-proxy'")
    )
    assert to_proxy.stdout.startswith("blocked"), to_proxy.stdout + to_proxy.stderr


def test_stack_nats_port_wants_the_automation_credentials(stack: Stack) -> None:
    """NATS on the published port: the automation account works, no password does not."""
    import asyncio

    from selfagent.client import AutomationClient
    from selfagent.errors import BusAuthError
    from selfagent.schemas import ActRequest, subjects
    from selfagent.schemas.actions import WaitAction

    _, _, values = stack
    url = f"nats://127.0.0.1:{values['NATS_PORT']}"
    saved = Path(values["SELFAGENT_SECRETS"]) / "nats" / f"{AUTOMATION}.env"
    credentials = ClientCredentials.read(saved)

    async def check() -> None:
        with pytest.raises(BusAuthError):
            await AutomationClient.connect(url, AUTOMATION, "not-the-password")
        client = await AutomationClient.connect(url, AUTOMATION, credentials.password)
        try:
            await client.stop("compose-check")
            with pytest.raises(BusAuthError):
                act = ActRequest(action=WaitAction(seconds=0.1))
                await client.publish(subjects.sandbox_act("compose-check"), act)
        finally:
            await client.close()

    asyncio.run(check())


def test_stack_services_become_healthy(stack: Stack) -> None:
    env_file, project, _ = stack
    deadline = time.monotonic() + 180
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for service in (
            "docker-proxy",
            "provisioner",
            "planner",
            "grounder",
            "actuator",
            "gateway",
        ):
            cid = _compose(env_file, "-p", project, "ps", "-q", service).stdout.strip()
            states[service] = run(
                [
                    "docker",
                    "inspect",
                    "--format",
                    "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                    cid,
                ]
            ).stdout.strip()
        if all(s == "running/healthy" for s in states.values()):
            break
        time.sleep(2)
    print(f"\nservice states: {states}")
    assert all(s == "running/healthy" for s in states.values()), states
    # Compose runs no sandbox container: the build-only service has none.
    assert _compose(env_file, "-p", project, "ps", "-q", "sandbox").stdout.strip() == ""


def _check_every_container(stack: Stack) -> int:
    """Ports, the socket, users and networks of every container, the desktops included;
    returns how many desktops were checked."""
    env_file, project, values = stack
    services = _compose(env_file, "-p", project, "ps", "-q").stdout.split()
    sandboxes = _sandboxes(stack)
    assert sandboxes, "no desktop to check"
    for container_id in services + sandboxes:
        attrs = _inspect(container_id)
        service = attrs["Config"]["Labels"].get("com.docker.compose.service", "sandbox")
        published = {
            port: bindings
            for port, bindings in (attrs["NetworkSettings"]["Ports"] or {}).items()
            if bindings
        }
        if service in ("gateway", "nats"):
            # The gateway for people, NATS for automation: both on loopback only.
            port = "8080/tcp" if service == "gateway" else "4222/tcp"
            assert list(published) == [port], (service, published)
            assert all(b["HostIp"] == "127.0.0.1" for b in published[port]), published
        else:
            assert not published, (service, published)
        sockets = [
            m for m in attrs["Mounts"] if "docker.sock" in f"{m.get('Source')} {m['Destination']}"
        ]
        assert bool(sockets) == (service == "docker-proxy"), (service, attrs["Mounts"])
        assert not attrs["HostConfig"]["Privileged"], service
    for container_id in sandboxes:
        attrs = _inspect(container_id)
        assert attrs["Config"]["User"] == "agent"
        assert list(attrs["NetworkSettings"]["Networks"]) == [values["DESKTOP_NETWORK"]]
        assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert [m["Type"] for m in attrs["Mounts"]] == ["volume"]
        if attrs["State"]["Running"]:
            who = run(["docker", "exec", container_id, "id", "-u"]).stdout.strip()
            assert who != "0", container_id
    return len(sandboxes)


def test_stack_publishes_only_gateway_and_nats_and_only_the_proxy_has_the_socket(
    stack: Stack,
) -> None:
    _warm_sandbox(stack)
    assert _check_every_container(stack) >= 1


def test_stack_runs_an_instruction_end_to_end(stack: Stack, compose_llm: FakeLLM) -> None:
    """The real images together: gateway -> NATS -> planner -> provisioner's desktop <- actuator."""
    values = stack[2]
    port = values["GATEWAY_PORT"]
    headers = {"Authorization": f"Bearer {values['SELFAGENT_TOKEN']}"}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)
    compose_llm.reset()
    compose_llm.push(
        tool_call("computer", {"action": "key", "keys": "ctrl+alt+t"}),
        tool_call("computer", {"action": "type", "text": "echo compose-ok > ~/Desktop/c.txt"}),
        tool_call("computer", {"action": "key", "keys": "Return"}),
        tool_call("computer", {"action": "done", "message": "Done inside the containers."}),
    )
    reply = httpx.post(
        f"http://127.0.0.1:{port}/api/chat",
        json={"prompt": "write compose-ok to a file on the desktop"},
        headers=headers,
        timeout=300,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "succeeded", body
    assert body["reply"] == "Done inside the containers."
    # The session's own desktop, a container the provisioner started.
    session = httpx.get(
        f"http://127.0.0.1:{port}/api/sessions/{body['session_id']}", headers=headers, timeout=10
    ).json()
    assert session["sandbox_id"], session
    (desktop,) = _sandboxes(stack, f"selfagent.sandbox-id={session['sandbox_id']}")
    written = _exec_in_sandbox(desktop, "print(open('/home/agent/Desktop/c.txt').read(), end='')")
    assert written.stdout == "compose-ok\n", written.stdout + written.stderr
    assert len(compose_llm.requests) == 4
    # The leased desktop and the refilled warm one: the same rules.
    assert _check_every_container(stack) >= 1


def test_stack_down_leaves_no_sandbox(stack: Stack) -> None:
    env_file, project, values = stack
    _warm_sandbox(stack)
    started = time.monotonic()
    _compose(env_file, "-p", project, "down", "--remove-orphans", timeout=300)
    print(f"\ncompose down: {time.monotonic() - started:.0f} s")
    assert _sandboxes(stack) == []
    left = run(["docker", "ps", "-aq", "--filter", "label=selfagent.sandbox=1"]).stdout.split()
    ours = [
        c
        for c in left
        if _inspect(c)["Config"]["Labels"].get("selfagent.host") in (values["DESKTOP_NETWORK"],)
    ]
    assert ours == []
    networks = run(["docker", "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert values["DESKTOP_NETWORK"] not in networks
