"""Prometheus figures of every service, and the endpoint that serves them.

One registry per process (:data:`REGISTRY`). The figures of all services are
defined here, so that instrumenting a service is a one-line call; each
process exposes only its own service's group (:func:`expose`), so that a
scrape of the grounder does not list planner figures stuck at zero.

Names carry their unit (``_seconds``, ``_total``); docs/operations.md lists
every figure and what an operator reads from it.

The endpoint (:func:`serving`, on ``<PREFIX>METRICS_PORT``) runs on the
service's own event loop rather than in prometheus_client's server thread:
some figures are read at scrape time from the service's state (the
provisioner's desktops, the actuator's pending approvals), and that state is
only ever touched from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeAlias

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from selfagent.errors import ConfigError

log = logging.getLogger(__name__)
P = ParamSpec("P")
# An async endpoint with any parameters (a WebSocket route).
Endpoint: TypeAlias = Callable[P, Coroutine[Any, Any, None]]

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST
# CPU, memory and open files of the process: the first thing to look at when
# a figure below looks wrong.
for _collector in (ProcessCollector, PlatformCollector, GCCollector):
    _collector(registry=REGISTRY)

# Steps and model calls take from milliseconds (a key press) to minutes (a
# large model on a CPU); the default buckets stop at 10 s.
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
# Waiting in the grounders' queue should be near zero; these resolve the rise.
_WAIT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- planner -------------------------------------------------------------------

TASK_OUTCOMES = ("succeeded", "failed", "stopped")
TASKS = Counter(
    "selfagent_planner_tasks_total",
    "Tasks that ended, by outcome (succeeded, failed, stopped)",
    ["outcome"],
    registry=None,
)
STEP_PHASES = ("model", "grounding", "action", "settle")
STEP_PHASE_SECONDS = Histogram(
    "selfagent_planner_step_phase_seconds",
    "Time of one phase of a step: model (the reply, retries included), grounding "
    "(screenshot and grounder), action (the actuator's work without settling), settle",
    ["phase"],
    buckets=_SLOW,
    registry=None,
)

# -- the model endpoint (planner, and the grounder when it uses a model) --------

MODEL_REQUEST_SECONDS = Histogram(
    "selfagent_model_request_seconds",
    "One request to the model endpoint (one attempt), by outcome (ok, error)",
    ["outcome"],
    buckets=_SLOW,
    registry=None,
)
MODEL_TOKENS = Counter(
    "selfagent_model_tokens_total",
    "Tokens the model endpoint reported, by kind (prompt, completion)",
    ["kind"],
    registry=None,
)

# -- grounder ------------------------------------------------------------------

GROUNDER_QUEUE_WAIT_SECONDS = Histogram(
    "selfagent_grounder_queue_wait_seconds",
    "From the request's sent_at to the start of its handling: time spent queued "
    "for a free grounder",
    buckets=_WAIT,
    registry=None,
)
GROUNDER_IN_FLIGHT = Gauge(
    "selfagent_grounder_in_flight",
    "Grounding requests this replica is handling now",
    registry=None,
)
GROUNDER_CONCURRENCY = Gauge(
    "selfagent_grounder_concurrency",
    "How many requests this replica handles at once at most (GROUNDER_CONCURRENCY)",
    registry=None,
)
GROUNDER_REQUEST_SECONDS = Histogram(
    "selfagent_grounder_request_seconds",
    "Handling one grounding request (model or OCR), by outcome: found, not_found, "
    "error (the model or the image failed)",
    ["outcome"],
    buckets=_SLOW,
    registry=None,
)

# -- actuator ------------------------------------------------------------------

ACTION_SECONDS = Histogram(
    "selfagent_actuator_action_seconds",
    "One action on a desktop, settling and the screenshot after it included, by kind",
    ["kind"],
    buckets=_SLOW,
    registry=None,
)
APPROVALS_PENDING = Gauge(
    "selfagent_actuator_approvals_pending",
    "Actions held until a person approves or denies them",
    registry=None,
)

# -- provisioner ---------------------------------------------------------------

SANDBOX_STATES = ("starting", "warm", "leased", "stopping")


class _Sandboxes:
    """``selfagent_provisioner_sandboxes{state}``, read from the pool at each scrape.

    Counting at scrape time cannot drift from the pool, which changes a
    desktop's state in many places.
    """

    def __init__(self) -> None:
        self.states: Callable[[], Iterable[str]] = tuple
        self.waiting: Callable[[], int] = int

    def describe(self) -> Iterable[Metric]:
        return self._families({}, 0)

    def collect(self) -> Iterable[Metric]:
        return self._families(Tally(self.states()), self.waiting())

    @staticmethod
    def _families(counts: dict[str, int], waiting: int) -> list[Metric]:
        sandboxes = GaugeMetricFamily(
            "selfagent_provisioner_sandboxes",
            "Desktops on this host by state: starting, warm (ready, unleased), "
            "leased (in use by a session), stopping",
            labels=["state"],
        )
        for state in SANDBOX_STATES:
            sandboxes.add_metric([state], counts.get(state, 0))
        queued = GaugeMetricFamily(
            "selfagent_provisioner_leases_waiting",
            "Sessions waiting for a desktop because the host is full",
            value=waiting,
        )
        return [sandboxes, queued]


SANDBOXES = _Sandboxes()


def watch_sandboxes(states: Callable[[], Iterable[str]], waiting: Callable[[], int]) -> None:
    """Where the provisioner's figures come from: each desktop's state, and the lease queue."""
    SANDBOXES.states, SANDBOXES.waiting = states, waiting


# -- gateway -------------------------------------------------------------------

WEBSOCKETS = Gauge(
    "selfagent_gateway_websockets",
    "Open WebSockets, by kind: events (chat pages and programs following sessions) "
    "and vnc (live desktop viewers)",
    ["kind"],
    registry=None,
)
EVENTS_RELAYED = Counter(
    "selfagent_gateway_events_relayed_total",
    "Session events the gateway received from the bus and handed to its listeners",
    registry=None,
)

_GROUPS: dict[str, tuple[Collector, ...]] = {
    "planner": (TASKS, STEP_PHASE_SECONDS, MODEL_REQUEST_SECONDS, MODEL_TOKENS),
    "grounder": (
        GROUNDER_QUEUE_WAIT_SECONDS,
        GROUNDER_IN_FLIGHT,
        GROUNDER_CONCURRENCY,
        GROUNDER_REQUEST_SECONDS,
        MODEL_REQUEST_SECONDS,
        MODEL_TOKENS,
    ),
    "actuator": (ACTION_SECONDS, APPROVALS_PENDING),
    "provisioner": (SANDBOXES,),
    "gateway": (WEBSOCKETS, EVENTS_RELAYED),
}
SERVICES = tuple(_GROUPS)
_exposed: set[int] = set()

# Labelled series appear once used; these are listed from the start at zero,
# so that a rate over the first task is not lost and dashboards show the
# series before anything happened.
for _outcome in TASK_OUTCOMES:
    TASKS.labels(_outcome)
for _phase in STEP_PHASES:
    STEP_PHASE_SECONDS.labels(_phase)
for _kind in ("prompt", "completion"):
    MODEL_TOKENS.labels(_kind)
for _kind in ("events", "vnc"):
    WEBSOCKETS.labels(_kind)


def expose(service: str) -> None:
    """Put ``service``'s figures in this process's registry (again: nothing happens)."""
    if service not in _GROUPS:
        raise ValueError(f"no metrics for a service named {service!r}; known: {SERVICES}")
    for collector in _GROUPS[service]:
        # Two services in one process (tests) share the model figures.
        if id(collector) not in _exposed:
            REGISTRY.register(collector)
            _exposed.add(id(collector))


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)


# -- one-line helpers for the services ----------------------------------------


def phase(name: str, started: float) -> None:
    """A step phase that began at ``started`` (``time.monotonic()``) ends now."""
    STEP_PHASE_SECONDS.labels(name).observe(max(0.0, time.monotonic() - started))


def step_executed(duration_ms: float, settle_ms: float) -> None:
    """The action and settle phases of a step, from the actuator's own timing."""
    STEP_PHASE_SECONDS.labels("action").observe(max(0.0, duration_ms - settle_ms) / 1000)
    STEP_PHASE_SECONDS.labels("settle").observe(max(0.0, settle_ms) / 1000)


@contextlib.contextmanager
def model_request() -> Iterator[None]:
    """One attempt at the model endpoint: its time, as ok or error (a cancelled one is not)."""
    started = time.monotonic()
    try:
        yield
    except Exception:
        MODEL_REQUEST_SECONDS.labels("error").observe(time.monotonic() - started)
        raise
    MODEL_REQUEST_SECONDS.labels("ok").observe(time.monotonic() - started)


def model_tokens(prompt: int, completion: int) -> None:
    MODEL_TOKENS.labels("prompt").inc(max(0, prompt))
    MODEL_TOKENS.labels("completion").inc(max(0, completion))


def grounded(started: float, *, ok: bool, found: bool) -> None:
    """A grounding request handled since ``started`` (``time.monotonic()``) is answered."""
    outcome = "error" if not ok else "found" if found else "not_found"
    GROUNDER_REQUEST_SECONDS.labels(outcome).observe(max(0.0, time.monotonic() - started))


def websocket(kind: str) -> Callable[[Endpoint[P]], Endpoint[P]]:
    """Decorates a WebSocket endpoint: ``selfagent_gateway_websockets{kind}`` while it runs."""
    gauge = WEBSOCKETS.labels(kind)

    def decorate(endpoint: Endpoint[P]) -> Endpoint[P]:
        # functools.wraps keeps the signature FastAPI reads the parameters from.
        @functools.wraps(endpoint)
        async def tracked(*args: P.args, **kwargs: P.kwargs) -> None:
            with gauge.track_inprogress():
                await endpoint(*args, **kwargs)

        return tracked

    return decorate


def queued_since(sent_at: datetime) -> None:
    """A grounding request sent at ``sent_at`` (another host's clock) starts now."""
    waited = (datetime.now(UTC) - sent_at).total_seconds()
    # Clocks of two hosts may disagree by a little; never a negative wait.
    GROUNDER_QUEUE_WAIT_SECONDS.observe(max(0.0, waited))


# -- the endpoint --------------------------------------------------------------

_READ_TIMEOUT = 10.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP request: ``GET /metrics`` (or ``/``); the connection closes after it."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body, kind = 405, b"only GET\n", "text/plain"
        elif path in ("/metrics", "/"):
            status, body, kind = 200, exposition(), CONTENT_TYPE_LATEST
        else:
            status, body, kind = 404, b"see /metrics\n", "text/plain"
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        status, body, kind, method = 400, b"bad request\n", "text/plain", "GET"
    try:
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        if method != "HEAD":
            writer.write(body)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(
    service: str, host: str, port: int, setting: str = "METRICS_PORT"
) -> AsyncIterator[int | None]:
    """Expose ``service``'s figures, and serve them on ``host:port`` while inside.

    Port 0 serves nothing (the figures are still kept, e.g. for the gateway's
    own ``/metrics``); yields the port listened on, or None. A port that
    cannot be bound is a :class:`ConfigError` naming ``setting``.
    """
    expose(service)
    if not port:
        yield None
        return
    try:
        server = await asyncio.start_server(_answer, host, port)
    except OSError as exc:
        raise ConfigError(f"{setting}={port}: cannot serve metrics on {host}: {exc}") from exc
    bound = int(server.sockets[0].getsockname()[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
