"""A tiny threaded HTTP/1.1 server on a real socket whose answers a test scripts byte by byte:
trickling bodies or headers, oversized or broken responses. It counts the connections it accepts
and keeps each request's head, so a test can prove what did (or did not) reach it."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class RawServer:
    """``respond(seen, sock)`` writes the whole answer for one request; the server closes after."""

    respond: Callable[[Seen, socket.socket], None]
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, sock: socket.socket) -> None:
        with self.lock:
            self.connections += 1
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        seen = Seen(method, path, headers)
        with self.lock:
            self.requests.append(seen)
        with suppress(OSError):  # the client gave up (deadline, cap): expected in these tests
            self.respond(seen, sock)


@contextmanager
def raw_server(respond: Callable[[Seen, socket.socket], None]) -> Iterator[tuple[RawServer, int]]:
    """Serves on 127.0.0.1 (a free port) until the block ends: yields (server, port)."""
    state = RawServer(respond)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            state.handle(self.request)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", 0), Handler) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield state, srv.server_address[1]
        finally:
            srv.shutdown()


def answer(sock: socket.socket, status: int, body: bytes, content_type: str = "application/json", **extra: str) -> None:
    """A complete, well-formed response."""
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close", **extra}
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body)


def trickle(sock: socket.socket, data: bytes, every_s: float) -> None:
    """Sends ``data`` one byte at a time, ``every_s`` apart (each gap well inside a read timeout)."""
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        time.sleep(every_s)
