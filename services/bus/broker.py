"""Connecting to NATS, validating what arrives, and typed request/reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage as NatsMessageCtx
from faststream.nats.message import NatsMessage
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, TypeAdapter, ValidationError

from selfagent.schemas import DeadLetter, ErrorCode, ErrorInfo, ErrorReply, Reply, subjects

from .errors import InvalidMessage, RemoteError, RequestTimeout

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT")
ReplyT = TypeVar("ReplyT", bound=Reply)

# Screenshots travel inline; the embedded server and compose raise the
# server's max_payload to match.
MAX_PAYLOAD = 8 * 1024 * 1024


def make_broker(url: str, name: str) -> NatsBroker:
    """A broker that never gives up on the server: a broker restart is a pause, not a crash."""
    return NatsBroker(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        # FastStream logs every message at this level: DEBUG keeps the
        # service logs about the service, not about each message.
        log_level=logging.DEBUG,
        graceful_timeout=5.0,
    )


async def start_with_retry(
    broker: NatsBroker,
    *,
    attempt_every: float = 1.0,
    before_start: Callable[[NatsBroker], Awaitable[None]] | None = None,
) -> None:
    """Start the broker, waiting for the server if it is not up yet.

    nats-py retries forever only once a first connection has succeeded; a
    service started before its broker would otherwise exit. ``before_start``
    runs once connected, before subscribers start (e.g. declaring streams).
    """
    while True:
        try:
            if before_start is not None:
                await broker.connect()
                await before_start(broker)
            await broker.start()
            return
        except (TimeoutError, OSError, Exception) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("NATS not reachable (%s); retrying in %.1fs", exc, attempt_every)
            await broker.stop()
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
        async def handler(msg: NatsMessageCtx) -> BaseModel | None:
            try:
                parsed = parse(model, msg.body, subject)
            except InvalidMessage as exc:
                return await reject(broker, service, msg, exc)
            try:
                return await fn(parsed)
            except Exception as exc:
                log.exception("%s: handler for %s failed", service, subject)
                if msg.reply_to:
                    return error_reply(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                return None

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return decorate
