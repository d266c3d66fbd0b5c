"""The receiving end of Atelier's webhooks: signature and timestamp verification (what a product
must do) and a small local receiver (``atelier webhook listen``) that verifies, detects duplicate
event ids and prints one JSON line per request.

Verification: recompute ``HMAC-SHA256(secret, f"{timestamp}.".encode() + raw_body)`` over the raw
request bytes, compare in constant time with every ``v1=`` value of ``X-Atelier-Signature`` (more
than one may be sent while a secret is rotated), and refuse a timestamp further than the
tolerance (default 5 minutes) from now, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

SIGNATURE_HEADER = "X-Atelier-Signature"
TIMESTAMP_HEADER = "X-Atelier-Timestamp"
DEFAULT_TOLERANCE_S = 300
MAX_BODY_BYTES = 1024 * 1024


class InvalidSignature(Exception):
    """The request is not authentic or too old; the message says which check failed."""


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Raises InvalidSignature unless ``signature`` holds a valid ``v1`` HMAC of ``timestamp`` and
    ``body`` under ``secret`` and ``timestamp`` is within ``tolerance_s`` of ``now``."""
    if not timestamp or not signature:
        raise InvalidSignature("missing signature or timestamp header")
    if not timestamp.isdigit():
        raise InvalidSignature("malformed timestamp")
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        raise InvalidSignature("timestamp outside the tolerance (stale or replayed)")
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    given = [p.strip()[3:] for p in signature.split(",") if p.strip().startswith("v1=")]
    if not any(hmac.compare_digest(expected, g) for g in given):
        raise InvalidSignature("signature does not match")


@dataclass
class Receiver:
    """Verifies requests and remembers event ids (in memory) to report duplicates."""

    secret: str
    tolerance_s: float = DEFAULT_TOLERANCE_S
    out: IO[str] | None = None
    seen: set[str] = field(default_factory=set)
    accepted: list[dict[str, Any]] = field(default_factory=list)  # events in arrival order
    log: list[dict[str, Any]] = field(default_factory=list)  # every request's result
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: Any, body: bytes) -> tuple[int, str, dict[str, Any]]:
        """(status, reason phrase, JSON answer) for one POST."""
        try:
            verify(
                self.secret, body, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER), None, self.tolerance_s
            )
        except InvalidSignature as exc:
            return self._note(401, "Invalid Signature", {"result": "rejected", "reason": str(exc)})
        try:
            event = json.loads(body)
            event_id = event["event_id"]
        except (ValueError, KeyError, TypeError):
            return self._note(400, "Bad Request", {"result": "rejected", "reason": "body is not an Atelier event"})
        if headers.get("Idempotency-Key") != event_id:
            return self._note(
                400, "Bad Request", {"result": "rejected", "reason": "Idempotency-Key is not the event id"}
            )
        with self.lock:
            duplicate = event_id in self.seen
            self.seen.add(event_id)
            if not duplicate:
                self.accepted.append(event)
        if duplicate:
            return self._note(200, "OK", {"result": "duplicate", "event_id": event_id})
        return self._note(200, "OK", {"result": "accepted", "event_id": event_id, "event": event})

    def _note(self, status: int, reason: str, answer: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        line = {"at": round(time.time(), 3), "status": status, **answer}
        with self.lock:
            self.log.append(line)
            if self.out is not None:
                self.out.write(json.dumps(line, sort_keys=True) + "\n")
                self.out.flush()
        return status, reason, {k: v for k, v in answer.items() if k != "event"}


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, reason: str, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, "OK", {"ok": True})
            else:
                self._answer(404, "Not Found", {"error": "POST events here"})

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "")
            if not length.isdigit():
                self._answer(411, "Length Required", {"error": "Content-Length required"})
                return
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                self._answer(413, "Content Too Large", {"error": f"body over {MAX_BODY_BYTES} bytes"})
                return
            self._answer(*receiver.handle(self.headers, self.rfile.read(int(length))))

        def log_message(self, *args: Any) -> None:  # one JSON line per request is printed instead
            pass

    return Handler


def make_server(host: str, port: int, receiver: Receiver) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _handler(receiver))
    server.daemon_threads = True
    return server


@contextmanager
def running(receiver: Receiver, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serves ``receiver`` in a thread for the block; yields its base URL."""
    server = make_server(host, port, receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def listen(
    host: str, port: int, secret: str, tolerance_s: float = DEFAULT_TOLERANCE_S, out: IO[str] = sys.stdout
) -> None:
    """Serves until interrupted, printing one JSON line per request (accepted events in full)."""
    server = make_server(host, port, Receiver(secret, tolerance_s, out))
    print(f"listening on http://{host}:{server.server_address[1]}/ (tolerance {tolerance_s:g}s)", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
