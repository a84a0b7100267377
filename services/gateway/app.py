"""The gateway's FastAPI application; its lifespan starts and stops the bus side."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from selfagent.bus import metrics
from selfagent.errors import BusError, BusUnavailable

from .api import router
from .auth import LOGIN_STYLE_SOURCE, TokenAuthMiddleware
from .deps import Gateway
from .files import router as files_router
from .security import FailureThrottle, SecurityHeaders, content_security_policy

log = logging.getLogger(__name__)


def _summary(errors: list[dict[str, object]]) -> str:
    parts = []
    for err in errors:
        loc = err.get("loc") or ()
        where = ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else str(loc)
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(gateway: Gateway) -> FastAPI:
    # Settings refuse an empty token, so the app is never open.
    settings = gateway.settings
    # Its figures are kept (and served at /metrics) also when no metrics port is set.
    metrics.expose("gateway")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.bus.start()
        try:
            yield
        finally:
            await gateway.bus.stop()

    app = FastAPI(
        title="selfagent gateway",
        summary="Web chat, live desktop and REST/WebSocket API of selfagent",
        lifespan=lifespan,
    )
    app.state.gateway = gateway

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in exc.errors()
        ]
        return JSONResponse(
            {"message": _summary(errors), "detail": jsonable_encoder(errors)}, status_code=422
        )

    @app.exception_handler(BusUnavailable)
    async def bus_unavailable(_: Request, exc: BusUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(BusError)
    async def bus_error(_: Request, exc: BusError) -> JSONResponse:
        # Another service (the provisioner) did not answer or refused.
        return JSONResponse({"detail": str(exc)}, status_code=503)

    app.include_router(router)
    app.include_router(files_router)
    for name, folder in (("ui", settings.ui_dir), ("novnc", settings.novnc_dir)):
        if not folder.is_dir():
            log.warning("%s directory %s does not exist; /%s/ will answer 404", name, folder, name)
        app.mount(f"/{name}", StaticFiles(directory=folder, check_dir=False), name=name)
    throttle = FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window)
    app.add_middleware(
        TokenAuthMiddleware, token=settings.token.get_secret_value(), throttle=throttle
    )
    # Added last, so it wraps the authentication too: refusals and the
    # sign-in page carry the headers as well.
    app.add_middleware(SecurityHeaders, csp=content_security_policy([LOGIN_STYLE_SOURCE]))
    return app
