"""Connecting to NATS, validating what arrives, and typed request/reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload
from urllib.parse import urlsplit

import nats.errors
from faststream.message import StreamMessage
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage as NatsMessageCtx
from faststream.nats.broker.broker import UNRECOVERABLE_CONNECT_ERRORS
from faststream.nats.message import NatsMessage
from faststream.nats.security import NatsSecurity, NatsUserPassword
from nats.aio.client import ErrorCallback
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from pydantic import BaseModel, TypeAdapter, ValidationError

from selfagent.schemas import DeadLetter, ErrorCode, ErrorInfo, ErrorReply, Reply, subjects

from .auth import covers
from .auth import inbox_prefix as auth_inbox_prefix
from .errors import BusAuthError, BusError, InvalidMessage, RemoteError, RequestTimeout
from .settings import BusAuth

if TYPE_CHECKING:
    from faststream.nats.schemas import Schedule
    from faststream.types import SendableMessage

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT")
ReplyT = TypeVar("ReplyT", bound=Reply)

# Screenshots travel inline; the embedded server and compose raise the
# server's max_payload to match.
MAX_PAYLOAD = 8 * 1024 * 1024


# What the server says (lower-cased) when it refuses who we are or what we
# may do. Retrying cannot fix any of these.
_REFUSALS = (
    "authorization violation",
    "authorization failed",
    "authentication expired",
    "authentication revoked",
    "permissions violation",
)
_PERMISSIONS_VIOLATION = "permissions violation"

# Subjects whose messages a stream keeps for later readers (the UI's replay,
# a planner picking up a session's controls), and that stream. Published
# with an acknowledgement, so that a stream between leaders (a cluster node
# died) does not silently miss them.
STORED: tuple[tuple[str, str], ...] = (
    (subjects.SESSION_EVENTS_ALL, subjects.EVENTS_STREAM),
    (subjects.SESSION_CONTROL_ALL, subjects.CONTROLS_STREAM),
)
# How long a stored publish is retried: a three-node cluster elects a new
# leader for a dead node's streams within about 5 s.
STORE_WAIT = 10.0
# How long a stream that never answered is taken to be absent.
ABSENT_RECHECK = 10.0
# How long stopping waits for queued stored publishes to be acknowledged.
OUTBOX_DRAIN = 5.0
# One attempt's wait for the stream's acknowledgement.
ACK_TIMEOUT = 1.0
_RETRY_EVERY = 0.1
# What a stream without a leader (or not reachable yet) answers, or does not.
_NOT_STORED = (NoStreamResponseError, NatsTimeoutError, TimeoutError)
# What nats-py raises when the connection is already gone (the server
# stopped first, or is being restarted) by the time we drain it.
_CONNECTION_GONE = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
    nats.errors.DrainTimeoutError,
)


def display_url(url: str) -> str:
    """The server address without credentials: user, password or token never reach a log."""
    shown = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        shown.append(f"{parts.scheme}://{host}" if parts.scheme else host)
    return ",".join(shown)


def is_refusal(exc: BaseException) -> bool:
    """Whether NATS refused our credentials or a permission (as opposed to being unreachable)."""
    if isinstance(exc, BusAuthError | nats.errors.AuthorizationError):
        return True
    if not isinstance(exc, nats.errors.Error):
        return False
    reason = str(exc).lower()
    return any(refusal in reason for refusal in _REFUSALS)


class Broker(NatsBroker):
    """The NatsBroker every service uses, with three changes of behaviour.

    * ``stop`` succeeds when the server is already gone: the draining that
      FastStream does would raise ``connection reconnecting`` and end the
      service with a traceback although nothing is wrong.
    * A broken connection is logged as one warning line, not with the
      exception attached (FastStream's hook, replaced below).
    * A publish the server refuses is only reported to the error callback
      (the request itself just times out); :meth:`guard` turns that report
      into an immediate :class:`BusAuthError`.
    * A publish to a subject a stream keeps (:data:`STORED`) waits for the
      stream's acknowledgement and is retried (with a message id, so the
      stream keeps one copy) while the stream has no leader: see
      :meth:`publish`.
    """

    def __init__(self, url: str, *, name: str, auth: BusAuth | None = None) -> None:
        # Set before NatsBroker.__init__, which installs the error callback.
        self.address = display_url(url)
        self._denied: dict[str, set[asyncio.Future[str]]] = {}
        auth = auth or BusAuth()
        self.user = auth.user or url_user(url)
        self.inbox = inbox_prefix(self.user) or DEFAULT_INBOX
        # How many copies JetStream keeps of the streams and bucket this
        # service declares (selfagent.bus.streams, selfagent.bus.sessions).
        self.replicas = auth.replicas
        # Streams that have acknowledged a publish of ours: they exist, so
        # their silence means "between leaders", worth waiting out.
        self._acked: set[str] = set()
        # Streams that did not answer before they ever acknowledged, and
        # when: probably not declared, so not waited for (see publish).
        self._absent: dict[str, float] = {}
        # Stored publishes, sent in order by one task while the publisher
        # goes on (see publish).
        self._outbox: asyncio.Queue[_Stored] | None = None
        self._sender: asyncio.Task[None] | None = None
        super().__init__(
            # nats-py takes a list and fails over between its members (and
            # the cluster's other members, which the servers announce).
            server_list(url),
            name=name,
            security=security(auth),
            # Replies come to this identity's own inbox prefix: the server
            # lets each identity read only its own (see selfagent.bus.auth).
            inbox_prefix=self.inbox,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=2,
            # FastStream logs every message at this level: DEBUG keeps the
            # service logs about the service, not about each message.
            log_level=logging.DEBUG,
            graceful_timeout=5.0,
            parser=_stored_is_not_a_request,
        )

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        await self._flush_outbox()
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        except* _CONNECTION_GONE as gone:
            log.info("NATS connection already lost while stopping (%s)", gone.exceptions[0])
        if self._connection is not None:
            # Draining failed part-way: close without it. The socket may be
            # half gone already, so flushing its buffer can fail too.
            try:
                await self._connection.close()
            except (*_CONNECTION_GONE, OSError) as exc:
                log.info("NATS connection already lost while closing (%s)", exc)
            self._connection = None

    @overload
    async def publish(
        self,
        message: SendableMessage,
        subject: str,
        headers: dict[str, str] | None = None,
        reply_to: str = "",
        correlation_id: str | None = None,
        stream: None = None,
        timeout: float | None = None,
        schedule: Schedule | None = None,
    ) -> None: ...

    @overload
    async def publish(
        self,
        message: SendableMessage,
        subject: str,
        headers: dict[str, str] | None = None,
        reply_to: str = "",
        correlation_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        schedule: Schedule | None = None,
    ) -> PubAck: ...

    async def publish(
        self,
        message: SendableMessage,
        subject: str,
        headers: dict[str, str] | None = None,
        reply_to: str = "",
        correlation_id: str | None = None,
        stream: str | None = None,
        timeout: float | None = None,
        schedule: Schedule | None = None,
    ) -> PubAck | None:
        """FastStream's publish; for a subject a stream keeps, acknowledged and retried.

        Such a publish (without ``stream``) returns at once, as a plain one
        does: one task per broker sends them in order and waits for each
        acknowledgement, so a step does not wait for three servers to agree
        (on a cluster, about 1 ms an event). With ``stream`` (the caller
        wants the acknowledgement) it is awaited here. ``stop`` sends what
        is queued first.

        A stream that has acknowledged this broker before exists, so no
        answer from it means it is between leaders (the node that led it
        died): the publish is retried for up to :data:`STORE_WAIT` seconds
        under one message id, which the stream stores once. A stream that
        never answered may not be declared at all (a bare server in a test,
        core NATS only): then the message is published as it always was,
        and so are the next ones for :data:`ABSENT_RECHECK` seconds.
        """
        target = stream or (None if reply_to or schedule else stored_in(subject))
        if target is None:
            await super().publish(
                message,
                subject,
                headers=headers,
                reply_to=reply_to,
                correlation_id=correlation_id,
                timeout=timeout,
                schedule=schedule,
            )
            return None
        if stream is None and self._connection is not None:
            self._enqueue(_Stored(message, subject, headers, correlation_id, timeout, target))
            return None
        return await self._store(
            _Stored(message, subject, headers, correlation_id, timeout, target),
            explicit=stream is not None,
            reply_to=reply_to,
            schedule=schedule,
        )

    async def _store(
        self,
        item: _Stored,
        *,
        explicit: bool,
        reply_to: str = "",
        schedule: Schedule | None = None,
    ) -> PubAck | None:
        """Publish ``item`` until its stream acknowledges it (see :meth:`publish`)."""
        headers = {"Nats-Msg-Id": uuid.uuid4().hex, **(item.headers or {})}
        missing_since = self._absent.get(item.stream, -ABSENT_RECHECK)
        if not explicit and time.monotonic() - missing_since < ABSENT_RECHECK:
            await super().publish(item.message, item.subject, headers=headers, timeout=item.timeout)
            return None
        deadline = time.monotonic() + STORE_WAIT
        while True:
            try:
                ack: PubAck = await super().publish(
                    item.message,
                    item.subject,
                    headers=headers,
                    reply_to=reply_to,
                    correlation_id=item.correlation_id,
                    stream=item.stream,
                    timeout=item.timeout or ACK_TIMEOUT,
                    schedule=schedule,
                )
            except _NOT_STORED as exc:
                if item.stream not in self._acked:
                    if explicit:
                        raise
                    self._absent[item.stream] = time.monotonic()
                    await super().publish(
                        item.message, item.subject, headers=headers, timeout=item.timeout
                    )
                    return None
                if time.monotonic() >= deadline:
                    raise
                log.info("%s did not store %s (%s); retrying", item.stream, item.subject, exc)
                await asyncio.sleep(_RETRY_EVERY)
                continue
            self._acked.add(item.stream)
            self._absent.pop(item.stream, None)
            return ack if explicit else None

    def _enqueue(self, item: _Stored) -> None:
        if self._outbox is None:
            self._outbox = asyncio.Queue()
        self._outbox.put_nowait(item)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(self._outbox), name="stored-publisher")

    async def _send(self, outbox: asyncio.Queue[_Stored]) -> None:
        """Publish the queued messages one after another, in the order they were published."""
        while True:
            item = await outbox.get()
            try:
                await self._store(item, explicit=False)
            except Exception:
                # As a failed plain publish would be: reported, and the
                # publisher goes on.
                log.exception("could not publish to %s", item.subject)
            finally:
                outbox.task_done()

    async def _flush_outbox(self) -> None:
        """Send what is queued (bounded by the graceful timeout), then stop the sender."""
        if self._outbox is not None and self._sender is not None and not self._sender.done():
            try:
                await asyncio.wait_for(self._outbox.join(), OUTBOX_DRAIN)
            except TimeoutError:
                log.warning(
                    "NATS at %s: %d event(s) not stored before stopping",
                    self.address,
                    self._outbox.qsize(),
                )
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None

    def _log_connection_broken(self, error_cb: ErrorCallback | None = None) -> ErrorCallback:
        async def on_error(err: Exception) -> None:
            if error_cb is not None:
                await error_cb(err)
            if not isinstance(err, nats.errors.Error):
                # Socket errors while the server is away: the reconnect loop
                # handles them and they say nothing new.
                return
            reason = str(err).removeprefix("nats: ").strip("'").lower()
            if reason.startswith(_PERMISSIONS_VIOLATION):
                self._report_denied(reason)
                log.warning("NATS at %s: %s", self.address, reason)
                return
            if reason in UNRECOVERABLE_CONNECT_ERRORS:
                # As FastStream does: raising here ends nats-py's connect loop,
                # which would otherwise retry bad credentials forever.
                raise err
            log.warning("NATS connection to %s broken (%s); reconnecting", self.address, reason)

        return on_error

    def _report_denied(self, reason: str) -> None:
        # 'permissions violation for publish to "$js.api.stream.info.x"'
        subject = reason.rpartition(" ")[2].strip('"')
        for waiter in self._denied.get(subject, ()):
            if not waiter.done():
                waiter.set_result(reason)

    async def guard(self, subject: str, operation: Awaitable[ModelT]) -> ModelT:
        """Await ``operation`` (which publishes to ``subject``); fail at once if that is refused."""
        key = subject.lower()
        denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._denied.setdefault(key, set()).add(denied)
        work = asyncio.ensure_future(operation)
        try:
            either: set[asyncio.Future[Any]] = {work, denied}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if denied.done() and not work.done():
                raise BusAuthError(
                    f"NATS at {self.address} does not allow this user to publish to {subject} "
                    f"({denied.result()}); grant the service's user that permission"
                )
            return work.result()
        finally:
            waiters = self._denied.get(key, set())
            waiters.discard(denied)
            if not waiters:
                self._denied.pop(key, None)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work


def make_broker(url: str, name: str, auth: BusAuth | None = None) -> Broker:
    """A broker that never gives up on the server: a broker restart is a pause, not a crash.

    ``auth``: the service's NATS user (``ServiceSettings.bus_auth()``).
    """
    return Broker(url, name=name, auth=auth)


DEFAULT_INBOX = "_INBOX"


async def _stored_is_not_a_request(
    msg: Msg, original: Callable[[Msg], Awaitable[StreamMessage[Msg]]]
) -> StreamMessage[Msg]:
    """Read a message as FastStream does; on a stored subject, never as a request.

    Events and controls are published, never requested: a reply subject on
    one is the publisher's acknowledgement inbox (see :meth:`Broker.publish`),
    which only the stream may answer. FastStream would send each
    subscriber's return value there, and the publisher would take the first
    answer for the stream's. A message delivered by JetStream keeps its reply
    subject: that is how it is acknowledged.
    """
    parsed = await original(msg)
    if parsed.reply_to and not parsed.reply_to.startswith("$JS.") and stored_in(msg.subject):
        parsed.reply_to = ""
    return parsed


@dataclass(frozen=True)
class _Stored:
    """A publish to a stored subject, waiting for its turn (see :meth:`Broker.publish`)."""

    message: Any
    subject: str
    headers: dict[str, str] | None
    correlation_id: str | None
    timeout: float | None
    stream: str


def stored_in(subject: str) -> str | None:
    """The stream that keeps messages published to ``subject`` (see :data:`STORED`), if any."""
    for pattern, stream in STORED:
        if covers(pattern, subject):
            return stream
    return None


def server_list(url: str) -> list[str]:
    """The servers of a comma-separated ``NATS_URL`` (one or more), blanks dropped."""
    servers = [server.strip() for server in url.split(",") if server.strip()]
    if not servers:
        raise ValueError("the NATS URL names no server")
    return servers


def replicas_of(broker: NatsBroker) -> int:
    """The replica count the service was configured with (1 for a plain NatsBroker)."""
    return broker.replicas if isinstance(broker, Broker) else 1


def url_user(url: str) -> str:
    """The user named in the (first) server URL, if any."""
    return urlsplit(url.split(",")[0].strip()).username or ""


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verify the server against ``ca_file`` (as well as the system's trusted CAs)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


def security(auth: BusAuth) -> NatsSecurity | None:
    """FastStream's form of the user, password and TLS trust; None: as the URL says."""
    context = tls_context(auth.ca_file) if auth.ca_file else None
    if auth.user:
        return NatsUserPassword(auth.user, auth.password, ssl_context=context)
    if context is not None:
        return NatsSecurity(ssl_context=context)
    return None


def inbox_prefix(user: str) -> str:
    return auth_inbox_prefix(user) if user else ""


def pull_inbox(broker: NatsBroker) -> bytes:
    """What a JetStream pull subscriber must be given as ``inbox_prefix``.

    FastStream's pull subscribers do not take the connection's inbox prefix
    but their own (``_INBOX.`` by default), which the server would refuse.
    """
    prefix = broker.inbox if isinstance(broker, Broker) else DEFAULT_INBOX
    return f"{prefix}.".encode()


async def guard(broker: NatsBroker, subject: str, operation: Awaitable[ModelT]) -> ModelT:
    """:meth:`Broker.guard` for any broker (a plain NatsBroker cannot see refusals)."""
    if isinstance(broker, Broker):
        return await broker.guard(subject, operation)
    return await operation


async def start_with_retry(
    broker: NatsBroker,
    *,
    attempt_every: float = 1.0,
    before_start: Callable[[NatsBroker], Awaitable[None]] | None = None,
) -> None:
    """Start the broker, waiting for the server if it is not up yet.

    nats-py keeps trying an unreachable server on its own (we never cap the
    attempts); what fails here and is retried is a server that answers but is
    not ready (JetStream still starting, a request timing out). A refusal
    (bad credentials, a missing permission) raises :class:`BusAuthError`
    instead: retrying cannot fix it. Anything else is a bug and propagates.
    ``before_start`` runs once connected, before subscribers start (e.g.
    declaring streams).
    """
    url = broker.address if isinstance(broker, Broker) else "the NATS server"
    user = f" as user {broker.user!r}" if isinstance(broker, Broker) and broker.user else ""
    while True:
        try:
            if before_start is not None:
                await broker.connect()
                await before_start(broker)
            await broker.start()
            return
        except Exception as exc:
            await broker.stop()
            if isinstance(exc, BusAuthError):
                raise
            if is_refusal(exc):
                raise BusAuthError(
                    f"NATS at {url} refused the connection{user} ({exc}); check the service's NATS "
                    "user and password (<SERVICE>_NATS_USER and <SERVICE>_NATS_PASSWORD, else "
                    "NATS_USER and NATS_PASSWORD, or the user in the NATS URL)"
                ) from exc
            if not isinstance(exc, OSError | nats.errors.Error | BusError):
                raise
            log.warning("NATS at %s not ready (%s); retrying in %.1fs", url, exc, attempt_every)
            await asyncio.sleep(attempt_every)


def parse(model: type[ModelT] | TypeAdapter[ModelT], body: bytes, subject: str) -> ModelT:
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise InvalidMessage(subject, detail) from exc


def error_reply(code: ErrorCode, message: str) -> ErrorReply:
    return ErrorReply(error=ErrorInfo(code=code, message=message))


async def reject(
    broker: NatsBroker, service: str, msg: NatsMessage, error: InvalidMessage
) -> ErrorReply | None:
    """Answer a bad request with a typed error, or dead-letter a bad publish.

    Returns the reply to send (for request/reply) or None after dead-lettering.
    Never raises: a malformed message must not take a service down.
    """
    log.warning("%s: %s", service, error)
    if msg.reply_to:
        return error_reply(ErrorCode.INVALID_MESSAGE, str(error))
    letter = DeadLetter(
        service=service,
        subject=msg.raw_message.subject,
        error=str(error),
        payload=msg.body.decode("utf-8", errors="replace")[:65536],
    )
    try:
        await broker.publish(letter, subjects.dead_letter(service))
    except Exception:
        log.exception("could not publish dead letter")
    return None


async def request(
    broker: NatsBroker,
    subject: str,
    message: BaseModel,
    reply_model: type[ReplyT],
    *,
    timeout: float,
) -> ReplyT:
    """Typed request/reply: returns the reply model or raises a :class:`BusError`."""
    try:
        response = await broker.request(message, subject, timeout=timeout)
    except (TimeoutError, NatsTimeoutError) as exc:
        raise RequestTimeout(subject, timeout) from exc
    except NoRespondersError as exc:
        raise RemoteError(
            subject,
            ErrorInfo(code=ErrorCode.TIMEOUT, message=f"no service is listening on {subject}"),
        ) from exc
    body: bytes = response.body
    reply = parse(reply_model, body, subject)
    if not reply.ok:
        error = reply.error or ErrorInfo(code=ErrorCode.INTERNAL, message="failed without reason")
        raise RemoteError(subject, error)
    return reply


HandlerFn = Callable[[NatsMessage], Awaitable[BaseModel | None]]


class _NoReply(BaseModel):
    """What a handler returns to stay silent on a request another subscriber answers."""


NO_REPLY: Final = _NoReply()
"""Return this from a typed handler to send no reply at all.

For subjects several services subscribe to without a queue group (an
actuator per host on ``agent.sandbox.*.act``): the one that does not serve
the sandbox leaves the answer to the one that does, since a requester keeps
the first reply it gets.
"""


def typed_handler(
    broker: NatsBroker,
    service: str,
    model: type[ModelT] | TypeAdapter[ModelT],
    subject: str,
) -> Callable[[Callable[[ModelT], Awaitable[BaseModel | None]]], HandlerFn]:
    """Wrap ``async def handler(request: Model) -> Reply | None`` for FastStream.

    The wrapper validates the raw body itself (instead of letting FastStream
    raise) so that a bad message becomes a typed error reply or a dead letter,
    and an unexpected exception becomes an ``internal`` error reply: the
    subscriber never dies and a requester never waits for a timeout.
    """

    def decorate(fn: Callable[[ModelT], Awaitable[BaseModel | None]]) -> HandlerFn:
        async def call(parsed: ModelT, _subject: str) -> BaseModel | None:
            return await fn(parsed)

        return _wrap(broker, service, model, subject, call, fn)

    return decorate


def typed_subject_handler(
    broker: NatsBroker,
    service: str,
    model: type[ModelT] | TypeAdapter[ModelT],
    subject: str,
) -> Callable[[Callable[[ModelT, str], Awaitable[BaseModel | None]]], HandlerFn]:
    """As :func:`typed_handler`, for a wildcard subscription: the handler also gets the subject.

    ``async def handler(request: Model, subject: str)``; the subject names
    what the request is for (e.g. the sandbox in ``agent.sandbox.<box>.act``).
    """

    def decorate(fn: Callable[[ModelT, str], Awaitable[BaseModel | None]]) -> HandlerFn:
        return _wrap(broker, service, model, subject, fn, fn)

    return decorate


def _wrap(
    broker: NatsBroker,
    service: str,
    model: type[ModelT] | TypeAdapter[ModelT],
    subject: str,
    call: Callable[[ModelT, str], Awaitable[BaseModel | None]],
    named: Callable[..., object],
) -> HandlerFn:
    async def handler(msg: NatsMessageCtx) -> BaseModel | None:
        try:
            parsed = parse(model, msg.body, subject)
        except InvalidMessage as exc:
            return await reject(broker, service, msg, exc)
        try:
            result = await call(parsed, msg.raw_message.subject)
        except Exception as exc:
            log.exception("%s: handler for %s failed", service, subject)
            if msg.reply_to:
                return error_reply(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return None
        if result is NO_REPLY:
            # FastStream answers a request with whatever the handler returned,
            # None included, unless the message has no reply subject.
            msg.reply_to = ""
            return None
        return result

    handler.__name__ = getattr(named, "__name__", "handler")
    handler.__doc__ = named.__doc__
    return handler
