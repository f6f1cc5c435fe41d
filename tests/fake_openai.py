"""What the OpenAI-compatible stand-ins of the fast tests and the load benchmark share: a
JSON request handler over the standard library's HTTP server, and a chat-completion body."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JSONHandler(BaseHTTPRequestHandler):
    """Reads a JSON request body, answers a JSON payload; logs nothing."""

    def read_json(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_json(self, payload: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def chat_completion(model: str, reply: str, finish: str | None = "stop", prompt_tokens: int = 1,
                    completion_tokens: int = 1, **choice: Any) -> dict[str, Any]:
    """The body of a chat completion answering `reply` (more fields of the choice in `choice`)."""
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": finish, **choice}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
