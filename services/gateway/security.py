"""What keeps the gateway's one secret secret and its page hard to abuse.

* :func:`token_problem`: the strength rule a token must pass before the
  gateway starts (a weak token makes every other defence moot).
* :class:`RedactTokens`: a logging filter that keeps tokens out of every log
  line, the access log included (``/?token=`` is how the page is opened).
* :class:`FailureThrottle`: per-client counting of wrong tokens, so guessing
  is answered with 429 instead of a verdict.
* :class:`SecurityHeaders`: CSP, nosniff, referrer policy on every response.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# --- token strength -------------------------------------------------------------

MIN_TOKEN_LENGTH = 22
MIN_TOKEN_BITS = 128
MIN_DISTINCT_CHARS = 10
# The alphabet a character class implies: a token made of lowercase letters
# and digits is scored as if each character were drawn from those 36.
_CLASSES: tuple[tuple[Callable[[str], bool], int], ...] = (
    (lambda c: c.islower() and c.isascii(), 26),
    (lambda c: c.isupper() and c.isascii(), 26),
    (lambda c: c.isdigit() and c.isascii(), 10),
)
_OTHER_CLASS = 32
_BASE64_ALPHABET = 64


def token_bits(token: str) -> float:
    """An upper estimate of a token's entropy: length * log2(alphabet of its classes).

    It is an estimate from the outside (a random-looking phrase scores like a
    random string); the length and variety floors in :func:`token_problem`
    catch the usual mistakes it would let through.
    """
    if not token:
        return 0.0
    used = [any(test(c) for c in token) for test, _ in _CLASSES]
    pool = sum(size for (_, size), present in zip(_CLASSES, used, strict=True) if present)
    if any(not any(test(c) for test, _ in _CLASSES) for c in token):
        pool += _OTHER_CLASS
    if used[0] and used[1]:
        # Both cases: the URL-safe base64 alphabet, whose digits, "-" and "_"
        # a short random draw may well lack.
        pool = max(pool, _BASE64_ALPHABET)
    return len(token) * math.log2(pool)


def token_problem(token: str) -> str | None:
    """Why ``token`` is too weak for the gateway, or None when it is strong enough.

    The rule: at least 22 characters, at least 10 different ones, and at least
    128 bits by :func:`token_bits` (lowercase 26, uppercase 26, digits 10,
    anything else 32; both cases of letters count as the 64 of URL-safe
    base64). ``secrets.token_urlsafe(16)`` (22 characters, 128 random bits)
    passes, as does ``openssl rand -hex 16`` or
    longer; words, repeated characters and short strings do not.
    """
    if not token.strip():
        return "SELFAGENT_TOKEN is empty: the gateway refuses to serve the desktop without one"
    hint = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if len(token) < MIN_TOKEN_LENGTH:
        return (
            f"SELFAGENT_TOKEN is too short ({len(token)} characters, at least "
            f"{MIN_TOKEN_LENGTH} needed for {MIN_TOKEN_BITS} bits); {hint}"
        )
    if len(set(token)) < MIN_DISTINCT_CHARS:
        return (
            f"SELFAGENT_TOKEN is too uniform ({len(set(token))} different characters, at "
            f"least {MIN_DISTINCT_CHARS} needed); {hint}"
        )
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        return (
            f"SELFAGENT_TOKEN is too weak (about {bits:.0f} bits, at least "
            f"{MIN_TOKEN_BITS} needed: make it longer or mix letters, digits and symbols); {hint}"
        )
    return None


# --- tokens out of the logs ---------------------------------------------------------

REDACTED = "[redacted]"
# The query parameter, whatever its value: a wrong guess may be a real
# token of another installation, or a typo of this one.
_TOKEN_PARAM = re.compile(r"((?:^|[?&;\s\"'])token=)[^&;#\s\"']*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Rewrites log records so no token appears in them.

    Arguments are redacted one by one, keeping their types, because uvicorn's
    access formatter unpacks ``record.args`` itself.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _TOKEN_PARAM.sub(r"\1" + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.args:
            if isinstance(record.msg, str):
                record.msg = self.redact(record.msg)
            return True
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: self.redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        try:
            message = record.getMessage()
        except Exception:  # not ours to fix; the handler reports it
            return True
        cleaned = self.redact(message)
        if cleaned != message:
            # A token made whole only by formatting ("token=%s", value).
            record.msg, record.args = cleaned, ()
        return True


# Where the gateway's lines come from: uvicorn's access and error loggers
# (which do not propagate to the root) and whatever the root handlers print.
_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "uvicorn.asgi")


def install_redaction(secrets: Iterable[str]) -> RedactTokens:
    """Attach one :class:`RedactTokens` to every logger and handler the gateway writes through.

    Called after uvicorn configured its logging; installing again replaces
    the filter instead of stacking another.
    """
    redactor = RedactTokens(secrets)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in _LOGGERS)]
    targets: list[logging.Filterer] = []
    for logger in loggers:
        targets.append(logger)
        targets.extend(logger.handlers)
    for target in targets:
        for old in [f for f in target.filters if isinstance(f, RedactTokens)]:
            target.removeFilter(old)
        target.addFilter(redactor)
    return redactor


# --- guessing -------------------------------------------------------------------------


def client_key(host: str | None) -> str:
    """Whom failures are counted for: the address, or its /64 for IPv6.

    One IPv6 host commonly holds a whole /64, and would otherwise get a fresh
    allowance with every address it picks.
    """
    if not host:
        return "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureThrottle:
    """Counts wrong tokens per client in a sliding window; bounded memory.

    After ``limit`` failures within ``window`` seconds a client is refused
    (429 with Retry-After) without its token being checked, until its oldest
    counted failure is older than the window. At most ``max_clients`` clients
    are remembered; the one that failed least recently is forgotten first.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        now = self._clock()
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(times[0] + self.window - now, 0.001)

    def failed(self, key: str) -> None:
        now = self._clock()
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


# --- response headers -------------------------------------------------------------------


def style_hash(css: str) -> str:
    """The CSP source that allows exactly one inline ``<style>`` block."""
    digest = hashlib.sha256(css.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy(extra_styles: Iterable[str] = ()) -> str:
    # Scripts only from the gateway's own files: nothing inline, no eval.
    # connect-src 'self' covers the page's own ws:/wss: sockets (CSP 3);
    # images from data:/blob: are noVNC's cursor and the page's previews.
    styles = " ".join(["'self'", *extra_styles])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            f"style-src {styles}",
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeaders:
    """Adds the security headers to every HTTP response, refusals and static files included."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            # Not no-referrer: with it, browsers send "Origin: null" on
            # same-origin POSTs, which the origin check would refuse.
            "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY",
            "Cross-Origin-Opener-Policy": "same-origin",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
