"""The gateway's defences around its token: strength, logs, guessing, other sites, headers.

The rules run in process (ASGI) against a real nats-server; the log and the
refusal to start are read from the gateway running as its own process, the
way an operator sees them. Take-over ownership is in test_gateway.py (it
needs a real desktop).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect

from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.gateway.auth import LOGIN_CSS
from selfagent.gateway.config import Settings
from selfagent.gateway.security import (
    REDACTED,
    FailureThrottle,
    RedactTokens,
    client_key,
    style_hash,
    token_problem,
)

from .helpers import recv_close
from .inprocess import ASGI_BASE_URL, AppOnBus, app_on_bus, serve, settings
from .stack import start_gateway

# --- weak tokens ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a-token-for-this-test", "too short"),
        ("0123456789abcdefghij", "too short"),
        ("test-token-" + "x" * 16, "too uniform"),
        ("t" * 64, "too uniform"),
        ("correcthorsebatterystaple", "too weak"),
        ("1234567890" * 3, "too weak"),  # digits only: 30 of them are ~100 bits
    ],
)
def test_weak_tokens_are_refused(token: str, problem: str) -> None:
    found = token_problem(token)
    assert found is not None and problem in found, found
    with pytest.raises(ValueError, match=problem):
        Settings(SELFAGENT_TOKEN=token, nats_url="nats://127.0.0.1:1")


@pytest.mark.parametrize(
    "make",
    [
        lambda: secrets.token_urlsafe(16),  # exactly 128 random bits, the floor
        lambda: secrets.token_urlsafe(32),
        lambda: secrets.token_hex(16),  # `openssl rand -hex 16`
        lambda: secrets.token_hex(24),
    ],
)
def test_generated_tokens_pass(make: object) -> None:
    assert callable(make)
    for _ in range(200):  # the variety floor must not reject a random draw
        token = make()
        assert token_problem(token) is None, token


def test_a_weak_token_stops_the_gateway_with_status_2(nats_server: EmbeddedNats) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_gateway(nats_server.url, free_port(), "unused", token="a-token-for-this-test")
    message = str(failed.value)
    assert "exited with 2" in message
    assert "cannot run: invalid configuration" in message and "too short" in message
    assert "a-token-for-this-test" not in message, "the rejected token reached the log"
    assert "Traceback" not in message


# --- tokens out of the logs -----------------------------------------------------------


def test_no_token_reaches_the_gateways_log(nats_server: EmbeddedNats) -> None:
    gw = start_gateway(nats_server.url, free_port(), "unused")
    guess = secrets.token_urlsafe(24)
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            assert client.get("/", params={"token": gw.token}).status_code == 303
            assert client.get("/", params={"token": guess}).status_code == 401
            assert client.get(f"/ui/app.js?x=1&token={gw.token}&y=2").status_code == 303
        # The API does not take the token from the URL (and this client has
        # no cookie), but the line is still logged.
        takeover = httpx.get(f"{gw.url}/api/takeover", params={"token": gw.token}, timeout=10)
        assert takeover.status_code == 401

        async def websocket() -> None:
            url = f"{gw.ws_url}/ws/events?token={gw.token}"
            async with connect(url, additional_headers=gw.auth, open_timeout=5) as ws:
                await asyncio.wait_for(ws.recv(), 5)

        asyncio.run(websocket())
        gw.process.terminate()
        gw.process.wait(15)
        log = gw.log()
    finally:
        gw.stop()
    assert gw.token not in log and guess not in log, log
    # The lines are there, with the value cut out.
    assert f'"GET /?token={REDACTED} HTTP/1.1" 303' in log, log
    assert f'"GET /?token={REDACTED} HTTP/1.1" 401' in log
    assert f'"GET /ui/app.js?x=1&token={REDACTED}&y=2 HTTP/1.1" 303' in log
    assert f'"GET /api/takeover?token={REDACTED} HTTP/1.1" 401' in log
    assert f'"WebSocket /ws/events?token={REDACTED}" [accepted]' in log


def test_redaction_keeps_uvicorns_argument_shapes() -> None:
    import logging

    secret = secrets.token_urlsafe(24)
    redactor = RedactTokens([secret])
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/?a=1&token={secret}", "1.1", 303),
        None,
    )
    assert redactor.filter(access)
    # uvicorn's access formatter unpacks exactly these five.
    assert access.args == ("127.0.0.1:5", "GET", f"/?a=1&token={REDACTED}", "1.1", 303)
    split = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "opened %s?token=%s", ("/", "abc"), None
    )
    redactor.filter(split)
    assert split.getMessage() == f"opened /?token={REDACTED}"
    bare = logging.LogRecord("x", logging.INFO, __file__, 1, "secret is %s", (secret,), None)
    redactor.filter(bare)
    assert secret not in bare.getMessage()


# --- guessing --------------------------------------------------------------------------


@pytest.fixture
async def strict(nats_server: EmbeddedNats) -> AsyncIterator[AppOnBus]:
    """A gateway that refuses a client after 3 wrong tokens within a minute."""
    async with app_on_bus(
        settings(nats_server.url, auth_failure_limit=3, auth_failure_window=60)
    ) as running:
        yield running


def _client(app: AppOnBus, address: str, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app.app, client=(address, 40000)),
        base_url=ASGI_BASE_URL,
        **kw,  # type: ignore[arg-type]
    )


async def test_repeated_wrong_tokens_are_answered_429(strict: AppOnBus) -> None:
    async with _client(strict, "192.0.2.7") as guesser, _client(strict, "192.0.2.8") as other:
        # Asking without a token is no guess: it never counts.
        for _ in range(10):
            assert (await guesser.get("/api/takeover")).status_code == 401
        for guess in ("Bearer a", "Bearer b", "Bearer c"):
            wrong = await guesser.get("/api/takeover", headers={"Authorization": guess})
            assert wrong.status_code == 401
        # Now even the right token is not checked: no verdict while refused.
        blocked = await guesser.get("/api/takeover", headers=strict.auth)
        assert blocked.status_code == 429, blocked.text
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        page = await guesser.get("/", params={"token": strict.token})
        assert page.status_code == 429 and "set-cookie" not in page.headers
        assert 'data-testid="login-form"' in page.text and "try again in" in page.text
        login = await guesser.post("/login", data={"token": strict.token})
        assert login.status_code == 429
        # The public health check stays open; other clients are not affected.
        assert (await guesser.get("/healthz")).status_code == 200
        assert (await other.get("/api/takeover", headers=strict.auth)).status_code == 200


async def test_wrong_tokens_in_every_place_count(strict: AppOnBus) -> None:
    async with _client(strict, "192.0.2.9") as guesser:
        assert (await guesser.get("/", params={"token": "nope-1"})).status_code == 401
        assert (await guesser.post("/login", data={"token": "nope-2"})).status_code == 401
        guesser.cookies.set("selfagent_token", "nope-3")
        assert (await guesser.get("/api/takeover")).status_code == 401
        assert (await guesser.get("/api/takeover")).status_code == 429


async def test_guessing_over_websockets_is_refused_too(nats_server: EmbeddedNats) -> None:
    async with serve(settings(nats_server.url, auth_failure_limit=2)) as gw:
        for guess in ("a", "b"):
            code, _, _ = await recv_close(
                gw.ws_url + "/ws/events", additional_headers={"Authorization": f"Bearer {guess}"}
            )
            assert code == 1008
        code, reason, data = await recv_close(gw.ws_url + "/ws/events", additional_headers=gw.auth)
        assert (code, reason, data) == (1013, "too many attempts", [])
        async with httpx.AsyncClient(base_url=gw.url, headers=gw.auth) as client:
            assert (await client.get("/api/takeover")).status_code == 429


def test_throttle_window_and_memory_are_bounded() -> None:
    now = [1000.0]
    throttle = FailureThrottle(limit=3, window=60, max_clients=100, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("a")
        now[0] += 10
    # Failures at 1000, 1010, 1020: refused until the first is a minute old.
    assert throttle.retry_after("a") == pytest.approx(30)
    now[0] += 31
    assert throttle.retry_after("a") == 0
    throttle.failed("a")  # 1061: with 1010 and 1020, three in the window again
    assert throttle.retry_after("a") == pytest.approx(9)
    now[0] += 120
    assert throttle.retry_after("a") == 0
    assert len(throttle) == 0, "a client whose failures aged out is forgotten"

    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle) == 100
    assert throttle.retry_after("10.0.3.231") == 0  # one failure is below the limit


def test_ipv6_clients_count_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") != client_key("192.0.2.2")


# --- requests from other sites ----------------------------------------------------------


async def test_cookie_requests_that_change_state_need_this_origin(app: AppOnBus) -> None:
    async with app.client(authenticated=False) as browser:
        assert (await browser.get("/", params={"token": app.token})).status_code == 303
        assert browser.cookies.get("selfagent_token")
        here = ASGI_BASE_URL

        refused = [
            {},
            {"Origin": "http://evil.invalid"},
            {"Origin": "null"},
            {"Referer": "http://evil.invalid/page"},
            {"Origin": "http://testserver.evil.invalid"},
        ]
        for headers in refused:
            response = await browser.post("/api/sessions", headers=headers)
            assert response.status_code == 403, (headers, response.text)
            assert "Origin" in response.json()["detail"]
        delete = await browser.delete(
            "/api/sessions/x-1", headers={"Origin": "http://evil.invalid"}
        )
        assert delete.status_code == 403

        assert (await browser.post("/api/sessions", headers={"Origin": here})).status_code == 201
        by_referer = await browser.post("/api/sessions", headers={"Referer": here + "/"})
        assert by_referer.status_code == 201
        # Reading is not changing: a foreign page cannot read the answer anyway (no CORS).
        read = await browser.get("/api/takeover", headers={"Origin": "http://evil.invalid"})
        assert read.status_code == 200

        cross_login = await browser.post(
            "/login", data={"token": app.token}, headers={"Origin": "http://evil.invalid"}
        )
        assert cross_login.status_code == 403

    # Programs with the bearer token: the Origin is not theirs to get right.
    async with app.client() as program:
        response = await program.post("/api/sessions", headers={"Origin": "http://evil.invalid"})
        assert response.status_code == 201


# --- headers -----------------------------------------------------------------------------


def _csp(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in policy.split(";")
        if part.strip()
    }


async def test_every_response_carries_the_security_headers(app: AppOnBus) -> None:
    async with app.client(authenticated=False) as anonymous, app.client() as client:
        responses = {
            "page": await client.get("/"),
            "script": await client.get("/ui/app.js"),
            "api": await client.get("/api/takeover"),
            "api 404": await client.get("/api/sessions/nobody-x"),
            "health": await anonymous.get("/healthz"),
            "sign-in": await anonymous.get("/"),
            "refusal": await anonymous.get("/api/takeover"),
        }
    for name, response in responses.items():
        headers = response.headers
        assert headers.get("x-content-type-options") == "nosniff", name
        assert headers.get("referrer-policy") == "same-origin", name
        assert headers.get("x-frame-options") == "DENY", name
        csp = _csp(response)
        assert csp["frame-ancestors"] == "'none'", name
        assert csp["script-src"] == "'self'", name  # no inline script, no eval
        assert csp["object-src"] == "'none'" and csp["base-uri"] == "'none'", name
    assert responses["page"].status_code == 200 and responses["sign-in"].status_code == 401


async def test_the_sign_in_pages_only_inline_style_is_allowed_by_hash(app: AppOnBus) -> None:
    async with app.client(authenticated=False) as anonymous:
        page = await anonymous.get("/login")
    styles = re.findall(r"<style>(.*?)</style>", page.text, re.DOTALL)
    assert styles == [LOGIN_CSS]
    assert style_hash(styles[0]) in _csp(page)["style-src"].split()
    assert "<script" not in page.text and " style=" not in page.text
