"""Test helpers: start a real HTTP server process and wait for it."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(args: list[str], health_path: str = "/healthz") -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *args, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + health_path, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def refservice(
    faults: str = "{}", rps: float = 200, max_in_flight: int = 32, seed: int = 1, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """A reference service with a fixed fault seed, so a test sees the same fault sequence each run.
    Its admin token is the environment's (the stack's), or one made for this test process; callers
    send ``atelier.refservice.admin_headers()``."""
    import os
    import secrets

    from atelier.refservice import ADMIN_TOKEN_ENV, admin_token

    os.environ.setdefault(ADMIN_TOKEN_ENV, admin_token() or secrets.token_hex(16))
    args = ["-m", "atelier.cli", "refservice", "serve", "--faults", faults, "--rps", str(rps)]
    args += ["--max-in-flight", str(max_in_flight), "--seed", str(seed), *extra]
    with server(args) as url:
        yield url


@contextmanager
def html_server() -> Iterator[str]:
    """A misconfigured endpoint: answers every request 200 with an HTML page, not JSON."""

    class Handler(BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html>maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
