"""Token authentication for every route, HTTP and WebSocket alike.

It is one ASGI middleware rather than a per-route dependency so that the
static mounts (the page, noVNC) and any route added later are covered by
default; only the paths in ``PUBLIC_PATHS`` are open.

Around the token check: a client that presents wrong tokens too often is
answered 429 without a verdict (:class:`~selfagent.gateway.security.FailureThrottle`),
and a state-changing request that relies on the browser's cookie must come
from the gateway's own page (its Origin, else its Referer, names this host).
"""

from __future__ import annotations

import hmac
import html
import logging
import math
from urllib.parse import parse_qs, urlencode

from starlette.datastructures import URL
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .security import FailureThrottle, client_key, style_hash

log = logging.getLogger(__name__)

COOKIE_NAME = "selfagent_token"
PUBLIC_PATHS = frozenset({"/healthz", "/login"})
WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013
MAX_LOGIN_BODY = 8192
# Methods that read: everything else changes something and, from a browser,
# must come from the page itself.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_matches(presented: str | None, expected: str) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def presented_token(conn: HTTPConnection) -> str | None:
    return bearer_token(conn) or conn.cookies.get(COOKIE_NAME)


def set_token_cookie(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE_NAME, token, httponly=True, samesite="strict", secure=secure, path="/"
    )


LOGIN_CSS = """
  body { margin: 0; min-height: 100vh; display: grid; place-items: center;
         background: #0f1218; color: #e6e9ef; font: 15px/1.5 system-ui, sans-serif; }
  form { background: #171b23; border: 1px solid #262c38; border-radius: 14px;
         padding: 32px; width: min(360px, 90vw); box-shadow: 0 20px 60px #0008; }
  h1 { margin: 0 0 4px; font-size: 20px; }
  p { margin: 0 0 20px; color: #8b93a5; }
  .err { color: #ff8a8a; }
  input { width: 100%; box-sizing: border-box; padding: 10px 12px; border-radius: 8px;
          border: 1px solid #323a4a; background: #0f1218; color: inherit; font: inherit; }
  button { margin-top: 14px; width: 100%; padding: 10px; border: 0; border-radius: 8px;
           background: #5b8cff; color: #fff; font: inherit; font-weight: 600; cursor: pointer; }
"""
# The sign-in page is the one response with inline CSS; the CSP allows
# exactly this block by its hash (and no inline script anywhere).
LOGIN_STYLE_SOURCE = style_hash(LOGIN_CSS)


def login_page(message: str = "", status_code: int = 401) -> HTMLResponse:
    note = f'<p class="err" data-testid="login-error">{html.escape(message)}</p>' if message else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>selfagent · sign in</title>
<style>{LOGIN_CSS}</style></head>
<body><form method="post" action="/login" data-testid="login-form">
<h1>selfagent</h1><p>Enter the access token (SELFAGENT_TOKEN) to open the desktop.</p>
{note}<input type="password" name="token" autocomplete="current-password"
 placeholder="Access token" data-testid="login-token" autofocus required>
<button type="submit" data-testid="login-submit">Sign in</button>
</form></body></html>"""
    return HTMLResponse(body, status_code=status_code)


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/api"


def _same_origin(conn: HTTPConnection) -> bool:
    """Browsers always send Origin on WebSocket handshakes; refuse other sites.

    Clients that are not browsers (automation scripts) send none and are let
    through on their token alone.
    """
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    host = conn.headers.get("host", "")
    return URL(origin).netloc == host


def _from_own_page(conn: HTTPConnection) -> bool:
    """Whether a browser request names this gateway as where it comes from.

    Origin first (browsers send it on every state-changing request); Referer
    when a browser left Origin out; neither (or "null") is refused, since a
    cookie alone proves only that a browser holds it, not which page asked.
    """
    host = conn.headers.get("host", "")
    origin = conn.headers.get("origin")
    if origin is not None and origin != "null":
        return URL(origin).netloc == host
    referer = conn.headers.get("referer")
    if referer:
        return URL(referer).netloc == host
    return False


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, token: str, throttle: FailureThrottle) -> None:
        if not token:
            raise ValueError("an empty token would leave the desktop open to anyone")
        self.app = app
        self._token = token
        self.throttle = throttle

    def _check(self, conn: HTTPConnection, presented: str | None) -> bool:
        """The token verdict; a wrong one counts against the client (a missing one does not)."""
        if token_matches(presented, self._token):
            return True
        if presented:
            key = client_key(conn.client.host if conn.client else None)
            self.throttle.failed(key)
            if self.throttle.retry_after(key) > 0:
                log.warning(
                    "client %s presented %d wrong tokens within %gs; refusing it for a while",
                    key,
                    self.throttle.limit,
                    self.throttle.window,
                )
        return False

    def _blocked_for(self, conn: HTTPConnection) -> float:
        return self.throttle.retry_after(client_key(conn.client.host if conn.client else None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path: str = scope["path"]

        if scope["type"] == "websocket":
            if self._blocked_for(conn) > 0:
                await self._refuse_websocket(receive, send, WS_TRY_AGAIN_LATER, "too many attempts")
                return
            if self._check(conn, presented_token(conn)) and _same_origin(conn):
                await self.app(scope, receive, send)
                return
            await self._refuse_websocket(receive, send)
            return

        if path == "/healthz":
            await self.app(scope, receive, send)
            return
        # Checked before the token: a client over the limit learns nothing,
        # not even from a right guess.
        wait = self._blocked_for(conn)
        if wait > 0:
            await _too_many(path, wait)(scope, receive, send)
            return

        if path == "/login":
            response = await self._login(Request(scope, receive))
            await response(scope, receive, send)
            return
        if path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return

        query_token = conn.query_params.get("token")
        if query_token is not None and not _is_api(path):
            await self._token_in_url(conn, query_token)(scope, receive, send)
            return

        bearer = bearer_token(conn)
        if self._check(conn, bearer or conn.cookies.get(COOKIE_NAME)):
            if bearer is None and scope["method"] not in SAFE_METHODS and not _from_own_page(conn):
                # The cookie rides along with any request a browser makes,
                # whichever site asked for it.
                await JSONResponse(
                    {"detail": "cross-site request refused: Origin does not name this gateway"},
                    status_code=403,
                )(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return

        denied: Response
        # /metrics: a scraper, not a person, so no sign-in page.
        if _is_api(path) or path.startswith("/ws/") or path == "/metrics":
            denied = JSONResponse(
                {"detail": "authentication required: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            denied = login_page()
        await denied(scope, receive, send)

    def _token_in_url(self, conn: HTTPConnection, query_token: str) -> Response:
        """First page load with ``?token=``: trade it for a cookie and strip it from the URL."""
        if not self._check(conn, query_token):
            return login_page("That token is not valid.")
        rest = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
        target = conn.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        set_token_cookie(response, self._token, secure=conn.url.scheme == "https")
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _login(self, request: Request) -> Response:
        if request.method == "GET":
            if token_matches(presented_token(request), self._token):
                return RedirectResponse("/", status_code=303)
            return login_page(status_code=200)
        if request.method != "POST":
            return JSONResponse({"detail": "method not allowed"}, status_code=405)
        if request.headers.get("origin") is not None and not _from_own_page(request):
            # Another site posting a token here would sign the browser in to
            # whatever that site chose.
            return JSONResponse({"detail": "cross-site sign-in refused"}, status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return login_page("Request too large.", status_code=413)
        fields = parse_qs(body.decode("utf-8", errors="replace"))
        token = (fields.get("token") or [""])[0]
        if not self._check(request, token):
            return login_page("That token is not valid.")
        response = RedirectResponse("/", status_code=303)
        set_token_cookie(response, self._token, secure=request.url.scheme == "https")
        return response

    async def _refuse_websocket(
        self,
        receive: Receive,
        send: Send,
        code: int = WS_POLICY_VIOLATION,
        reason: str = "authentication required",
    ) -> None:
        # Accept-then-close gives the client a real close code (1008) to act
        # on; refusing the upgrade would only surface as a generic HTTP 403.
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})


def _too_many(path: str, wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    headers = {"Retry-After": str(seconds)}
    message = f"too many wrong tokens from this address; try again in {seconds} s"
    if _is_api(path) or path.startswith("/ws/"):
        return JSONResponse({"detail": message}, status_code=429, headers=headers)
    page = login_page(message[0].upper() + message[1:] + ".", status_code=429)
    page.headers.update(headers)
    return page
