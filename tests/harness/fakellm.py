"""A scripted OpenAI-compatible chat-completions server: the only fake in the tests.

The real ``openai`` client talks to it over HTTP. Each POST to
``/v1/chat/completions`` consumes the next scripted reply. A reply is a dict:

    {"content": "..."}                          plain assistant text
    {"tool": "computer", "arguments": {...}}    a native tool call
    {"status": 429, "headers": {...}, "body": {...}}   an HTTP error
    {"delay": 5.0, ...}                         sleep first (timeouts)
    {"raw": b"..."}                             raw response bytes (truncated JSON)
    {"usage": {"prompt_tokens": ..}, ...}       what the reply reports as usage

or a callable taking the request JSON and returning such a dict. When the
script runs out, ``default`` is used (if set) or the server answers 500.

Usage is 100 prompt + 20 completion tokens per call, unless the reply says
otherwise or the server was made with ``usage=estimate_usage``, which counts
like a Qwen-style vision model would: text at 4 characters a token, each
image at one token per 28x28 patch.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = dict[str, Any]
ScriptItem = Reply | Callable[[dict[str, Any]], Reply]
Usage = Callable[[dict[str, Any], Reply], dict[str, int]]

PATCH = 28
CHARS_PER_TOKEN = 4


def estimate_usage(request: dict[str, Any], reply: Reply) -> dict[str, int]:
    """Plausible token counts for a request and its reply, from their size."""
    from PIL import Image

    text = 0
    image_tokens = 0
    for message in request.get("messages", []):
        content = message.get("content")
        parts: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        )
        for part in parts:
            if part.get("type") == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                with Image.open(io.BytesIO(base64.b64decode(data))) as image:
                    w, h = image.size
                image_tokens += math.ceil(w / PATCH) * math.ceil(h / PATCH)
            else:
                text += len(str(part.get("text", "")))
    for tool in request.get("tools") or []:
        text += len(json.dumps(tool))
    said = len(str(reply.get("content") or "")) + len(json.dumps(reply.get("arguments") or ""))
    prompt = math.ceil(text / CHARS_PER_TOKEN) + image_tokens
    completion = max(1, math.ceil(said / CHARS_PER_TOKEN))
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def tool_call(name: str, arguments: dict[str, Any]) -> Reply:
    return {"tool": name, "arguments": arguments}


class FakeLLM:
    def __init__(
        self, default: ScriptItem | None = None, host: str = "127.0.0.1", usage: Usage | None = None
    ) -> None:
        self.script: list[ScriptItem] = []
        self.default = default
        self.usage = usage
        self.requests: list[dict[str, Any]] = []
        # How many requests were being answered at once, at most: lets tests
        # check concurrency without timing anything.
        self.in_flight = 0
        self.max_in_flight = 0
        self._generation = 0
        self._lock = threading.Lock()
        # host="0.0.0.0" lets containers reach it (compose tests).
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def push(self, *items: ScriptItem) -> None:
        with self._lock:
            self.script.extend(items)

    def reset(self, default: ScriptItem | None = None) -> None:
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.default = default
            # Requests still sleeping from before the reset (a delayed reply
            # whose caller is gone) belong to the previous test: stop counting them.
            self._generation += 1
            self.in_flight = 0
            self.max_in_flight = 0

    def _next(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(request)
            item = self.script.pop(0) if self.script else self.default
        if item is None:
            return {"status": 500, "body": {"error": {"message": "script exhausted"}}}
        return item(request) if callable(item) else item

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    # What the tests name as LLM_MODEL; anything else is "not listed".
                    served = ["fake", "fake-planner"]
                    self._send(
                        200,
                        {"object": "list", "data": [{"id": m, "object": "model"} for m in served]},
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                with fake._lock:
                    generation = fake._generation
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._answer()
                finally:
                    with fake._lock:
                        if generation == fake._generation:
                            fake.in_flight -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                reply = fake._next(request)
                if reply.get("delay"):
                    time.sleep(float(reply["delay"]))
                if "raw" in reply:
                    body = reply["raw"]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if "status" in reply:
                    self._send(int(reply["status"]), reply.get("body", {}), reply.get("headers"))
                    return
                if "usage" not in reply and fake.usage is not None:
                    reply = {**reply, "usage": fake.usage(request, reply)}
                self._send(200, completion(request, reply))

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError):
                    self.wfile.write(data)

        return Handler


def completion(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    finish = "stop"
    if "tool" in reply:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {
                    "name": reply["tool"],
                    "arguments": json.dumps(reply["arguments"]),
                },
            }
        ]
        finish = "tool_calls"
    counted = reply.get("usage") or {}
    prompt = int(counted.get("prompt_tokens", 100))
    answer = int(counted.get("completion_tokens", 20))
    usage = {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


class TaggedScripts:
    """A ``default`` for :class:`FakeLLM` that answers by the ``[tag]`` in the task's prompt.

    Each tag has a script; the reply is the script's entry for the turn the
    task is at (its count of assistant messages), so tasks of several
    sessions can run at once, each getting its own script in order. The last
    entry repeats. Requests are kept per tag in ``seen``.
    """

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply:
        text = json.dumps(body["messages"])
        with self._lock:
            for tag, script in self.scripts.items():
                if f"[{tag}]" in text:
                    self.seen.setdefault(tag, []).append(body)
                    turn = sum(1 for m in body["messages"] if m.get("role") == "assistant")
                    return script[min(turn, len(script) - 1)]
        return {"status": 500, "body": {"error": {"message": "no script for this prompt"}}}

