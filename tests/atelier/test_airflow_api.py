"""airflow_api.token: logging in to the api-server, retried while it starts (real HTTP, local server)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from atelier import airflow_api
from atelier.airflow_api import AirflowError, token
from atelier.settings import Settings


class LoginServer:
    """Answers POST /auth/token from a script: ``"drop"`` closes the connection unanswered,
    ``(status, body)`` answers; the last entry repeats. Records each request's JSON body."""

    def __init__(self, script: list[str | tuple[int, dict]]):
        self.script = script
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                step = outer.script[min(len(outer.requests), len(outer.script)) - 1]
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, payload = step
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[type[LoginServer]]:
    started: list[LoginServer] = []

    def start(script: list[str | tuple[int, dict]]) -> LoginServer:
        srv = LoginServer(script)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records the waits between attempts instead of sleeping them."""
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    return waited


def cfg(url: str) -> Settings:
    return Settings(airflow_url=url, airflow_user="admin", airflow_password="s3cret")


def test_token_on_first_answer(server, sleeps):
    srv = server([(201, {"access_token": "jwt-1"})])
    assert token(cfg(srv.url)) == "jwt-1"
    assert srv.requests == [{"path": "/auth/token", "username": "admin", "password": "s3cret"}]
    assert sleeps == []


def test_rides_out_a_starting_server(server, sleeps):
    """Dropped connections and 503s while the api-server starts are retried, 2 s apart."""
    srv = server(["drop", (503, {"detail": "starting"}), (200, {"access_token": "jwt-2"})])
    assert token(cfg(srv.url)) == "jwt-2"
    assert len(srv.requests) == 3
    assert sleeps == [2.0, 2.0]


def test_gives_up_after_the_attempts_naming_the_url_and_last_failure(server, sleeps, monkeypatch):
    monkeypatch.setattr(airflow_api, "LOGIN_ATTEMPTS", 4)
    srv = server([(401, {"detail": "bad credentials"})])
    with pytest.raises(AirflowError) as err:
        token(cfg(srv.url))
    assert len(srv.requests) == 4
    assert sleeps == [2.0, 2.0, 2.0]  # no pointless wait after the last attempt
    assert srv.url in str(err.value) and "401" in str(err.value) and "bad credentials" in str(err.value)
    assert isinstance(err.value.__cause__, AirflowError)


def test_unreachable_server_is_a_transport_failure(server, sleeps, monkeypatch):
    monkeypatch.setattr(airflow_api, "LOGIN_ATTEMPTS", 2)
    srv = server(["drop"])
    with pytest.raises(AirflowError, match=f"cannot log in to Airflow at {srv.url}"):
        token(cfg(srv.url))
    assert len(srv.requests) == 2 and sleeps == [2.0]
