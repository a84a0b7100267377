"""What a model endpoint says at start: does it answer, does it serve the model asked for.

Used by ``selfagent up`` (before anything starts), the planner and the
grounder (at start, and again while the endpoint is down). It never stops
the product: a model server that comes up later is simply found later. Its
findings name the address and the setting to change, never the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

# Names that exist only inside Docker's networks (or Docker Desktop's VM).
DOCKER_ONLY_HOSTS = frozenset({"host.docker.internal", "gateway.docker.internal"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})
LISTED_AT_MOST = 20


@dataclass
class EndpointReport:
    url: str
    model: str
    prefix: str
    reachable: bool = False
    detail: str = ""
    models: list[str] = field(default_factory=list)
    model_listed: bool | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reachable and self.model_listed is not False and not self.warnings

    def lines(self) -> list[str]:
        """The findings as a person reads them, one line each."""
        head = f"{self.prefix}API_BASE_URL {self.url}"
        out = []
        if self.reachable:
            listed = ", ".join(self.models[:LISTED_AT_MOST]) or "none"
            if len(self.models) > LISTED_AT_MOST:
                listed += f" (+{len(self.models) - LISTED_AT_MOST} more)"
            out.append(f"{head} answers; it lists: {listed}")
            if self.model_listed is False:
                out.append(
                    f"{self.prefix}MODEL {self.model!r} is not among them: check {self.prefix}MODEL"
                )
        else:
            out.append(f"{head} does not answer: {self.detail}; check {self.prefix}API_BASE_URL")
        out.extend(self.warnings)
        return out


def in_container() -> bool:
    """Whether this is one of selfagent's service images (each Dockerfile sets it).

    Not guessed from the filesystem: local mode run inside some container
    of the person's own must keep meaning what it says by 127.0.0.1.
    """
    return os.environ.get("SELFAGENT_IN_CONTAINER") == "1"


def static_warnings(url: str, model: str, prefix: str, *, containerized: bool) -> list[str]:
    warnings = []
    if not model.strip():
        warnings.append(f"{prefix}MODEL is empty: set it to a model the endpoint serves")
    host = (urlsplit(url).hostname or "").lower()
    if host in DOCKER_ONLY_HOSTS and not containerized:
        warnings.append(
            f"{prefix}API_BASE_URL names {host}, which exists only inside Docker; "
            "outside it (selfagent up) use 127.0.0.1 or the server's address"
        )
    return warnings


def reachable_url(url: str, *, containerized: bool | None = None) -> tuple[str, str | None]:
    """The URL to use from here, and a note when it had to change.

    One ``.env`` serves local mode and compose: ``127.0.0.1`` there means
    this machine, but inside a container it is the container itself, so a
    containerized service asks ``host.docker.internal`` (which compose maps
    to the host) instead.
    """
    inside = in_container() if containerized is None else containerized
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not inside or host not in LOOPBACK_HOSTS:
        return url, None
    netloc = "host.docker.internal" + (f":{parts.port}" if parts.port else "")
    changed = parts._replace(netloc=netloc).geturl()
    return changed, f"{url} names this container itself; using {changed} (the host) instead"


def shown(url: str) -> str:
    """The URL without user:password, as it may be shown or logged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


async def check_endpoint(
    url: str,
    model: str,
    api_key: str | None,
    *,
    prefix: str = "LLM_",
    timeout: float = 5.0,
    containerized: bool | None = None,
) -> EndpointReport:
    """GET <url>/models, with the key if there is one; never raises."""
    inside = in_container() if containerized is None else containerized
    report = EndpointReport(url=shown(url), model=model, prefix=prefix)
    report.warnings = static_warnings(url, model, prefix, containerized=inside)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "none" else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url.rstrip("/") + "/models", headers=headers)
    except httpx.HTTPError as exc:
        report.detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return report
    if response.status_code in (401, 403):
        report.reachable = True
        report.warnings.append(
            f"the endpoint refused the key ({response.status_code}): check {prefix}API_KEY"
        )
        return report
    report.reachable = True
    if response.status_code != 200:
        # Some servers have no model list; the endpoint still answers.
        report.detail = f"no model list (HTTP {response.status_code})"
        return report
    try:
        data = response.json().get("data", [])
        report.models = [str(i["id"]) for i in data if isinstance(i, dict) and "id" in i]
    except (ValueError, AttributeError, TypeError):
        report.detail = "the model list is not JSON"
        return report
    if report.models and model.strip():
        report.model_listed = model in report.models
    return report
