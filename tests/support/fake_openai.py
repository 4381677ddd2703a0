"""A small local HTTP server that speaks the OpenAI chat completions API, for the ``openai`` executor's tests.

It answers with a reply derived from the request (so tests can check what was sent), streams it as server-sent
events when asked, records every request, and can be told to fail the next N requests with a status code.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeOpenAI:
    reply_prefix: str = "echo: "
    requests: list[Recorded] = field(default_factory=list)
    failures: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    delay_s: float = 0.0

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        for _ in range(times):
            self.failures.append((status, headers or {}))

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if fake.delay_s:
                    threading.Event().wait(fake.delay_s)
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if fake.failures:
                    status, headers = fake.failures.popleft()
                    return self._json(status, {"error": {"message": f"injected {status}"}}, headers)
                if self.headers.get("Authorization") != "Bearer sk-test":
                    return self._json(401, {"error": {"message": "Incorrect API key provided"}})
                text = fake.reply_prefix + str(body["messages"][-1]["content"])
                usage = {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 9}
                if body.get("stream"):
                    return self._stream(body["model"], text, usage)
                return self._json(200, {"id": "c1", "object": "chat.completion", "model": body["model"],
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                     "finish_reason": "stop"}], "usage": usage})

            def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, text: str, usage: dict[str, int]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                words = text.split(" ")
                chunks = [{"choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}}]}
                          for i, w in enumerate(words)]
                chunks.append({"choices": [], "usage": usage})
                for chunk in chunks:
                    self._chunk(f"data: {json.dumps({'model': model, **chunk})}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
