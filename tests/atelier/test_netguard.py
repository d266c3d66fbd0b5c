"""The guarded outbound fetch: which addresses count as public, DNS rebinding, SNI/Host kept
when connecting to the vetted address, redirects, total deadline and byte cap — all against
real sockets on 127.0.0.1 (tests opt in to loopback explicitly; the default policy refuses it)."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from atelier import netguard, storage
from atelier.storage import InputUnavailable, StorageError
from tests.fakes.raw_http import Seen, answer, raw_server, trickle

LOCAL = netguard.Policy.from_config(allow_http=True, allow_networks=["127.0.0.0/8"])
PUBLIC = "93.184.215.14"  # a public unicast address (no test ever completes a request to it)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.4", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT (shared address space)
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "private"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("::", "private"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "wrapper of 127.0.0.1"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "wrapper of 169.254.169.254"),
        ("64:ff9b::7f00:1", "wrapper of 127.0.0.1"),  # NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", "wrapper of 169.254.169.254"),
        ("64:ff9b::a01:203", "wrapper of 10.1.2.3"),
        ("64:ff9b:1::808:808", "non-public IPv6"),  # local-use NAT64 (RFC 8215)
        ("2002:7f00:1::1", "wrapper of 127.0.0.1"),  # 6to4
        ("2002:a9fe:a9fe::", "wrapper of 169.254.169.254"),
        ("2002:c0a8:1::1", "wrapper of 192.168.0.1"),
        ("::7f00:1", "non-public IPv6"),  # deprecated IPv4-compatible
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_non_public_addresses_are_named(address: str, why: str):
    reason = netguard.non_public_reason(ipaddress.ip_address(address))
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", PUBLIC, "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_pass(address: str):
    assert netguard.non_public_reason(ipaddress.ip_address(address)) is None


def fake_getaddrinfo(answers: list[str]) -> tuple[Any, list[str]]:
    """A getaddrinfo that answers hostnames from ``answers`` in turn (the last one repeats) and
    numeric hosts as the real one does; returns it and the list of hostnames it was asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(text)
            return real(host, port, *args, **kwargs)
        except ValueError:
            pass
        asked.append(text)
        answer = answers[min(len(asked), len(answers)) - 1]
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer, int(port or 0)))]

    return getaddrinfo, asked


@pytest.mark.parametrize("wrapped", ["64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "::ffff:10.0.0.1"])
def test_image_hosts_resolving_to_wrapped_private_addresses_are_refused(monkeypatch: pytest.MonkeyPatch, wrapped: str):
    getaddrinfo, _ = fake_getaddrinfo([wrapped])
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(StorageError, match="wrapper of"):
        storage.fetch_https("https://images.example/a.png", 1024)


def test_dns_rebinding_cannot_reach_loopback(monkeypatch: pytest.MonkeyPatch):
    """The resolver answers a public address to the check and 127.0.0.1 after it: the fetch
    connects only to the address it vetted, so the loopback listener never sees a connection."""
    with raw_server(lambda seen, sock: answer(sock, 200, b"internal")) as (listener, port):
        getaddrinfo, asked = fake_getaddrinfo([PUBLIC, "127.0.0.1"])
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        with pytest.raises(InputUnavailable):  # the vetted public address does not serve this port
            storage.fetch_https(f"https://rebind.example:{port}/a.png", 1024)
    assert listener.connections == 0
    assert asked == ["rebind.example"]  # resolved once


def test_injected_resolver_is_asked_once_per_connection_and_its_answer_is_used():
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC] if len(calls) == 1 else ["127.0.0.1"]

    with raw_server(lambda seen, sock: answer(sock, 200, b"internal")) as (listener, port):
        with pytest.raises(netguard.FetchError):  # the public address does not serve this port
            netguard.fetch(f"https://rebind.example:{port}/a.png", 1024, resolve=resolve, total_timeout_s=10)
        assert listener.connections == 0 and calls == [("rebind.example", port)]
        # Second connection: now the answer is loopback, and the strict policy refuses it.
        with pytest.raises(netguard.Refused, match=re.escape("resolves to 127.0.0.1, which is loopback")):
            netguard.fetch(f"https://rebind.example:{port}/a.png", 1024, resolve=resolve)
    assert listener.connections == 0


def test_connects_to_the_vetted_address_with_host_and_sni_kept(tmp_path: Path):
    """TLS to 127.0.0.1 for ``images.example``: the server sees SNI and Host ``images.example``
    and the client verifies the certificate against that name, not against the address."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=images.example"),
            *("-addext", "subjectAltName=DNS:images.example", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc,return-value]

    def respond(seen: Seen, sock: socket.socket) -> None:
        answer(sock, 200, seen.headers["host"].encode())

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536)
            head = data.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)}
            respond(Seen("GET", head[0].split()[1], headers), tls)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    http = netguard.client(LOCAL, verify=client_ctx, resolve=lambda host, p: ["127.0.0.1"])
    with http:
        body = netguard.fetch(f"https://images.example:{port}/a.png", 1024, policy=LOCAL, http=http)
    thread.join(5)
    listener.close()
    assert body == f"images.example:{port}".encode() and sni == ["images.example"]


def test_http_urls_credentials_and_redirects_are_refused():
    with pytest.raises(netguard.Refused, match="scheme 'http'"):
        netguard.fetch("http://images.example/a.png", 1024)
    with pytest.raises(netguard.Refused, match="credentials"):
        netguard.fetch("https://user:pw@images.example/a.png", 1024)
    with pytest.raises(netguard.Refused, match=re.escape("address 169.254.169.254 is link-local")):
        netguard.fetch("https://169.254.169.254/latest/meta-data", 1024)

    def redirect(seen: Seen, sock: socket.socket) -> None:
        answer(sock, 302, b"", Location="http://169.254.169.254/latest/meta-data")

    with raw_server(redirect) as (srv, port):
        with pytest.raises(netguard.FetchError, match="answered 302 Found") as exc:
            netguard.fetch(f"http://images.example:{port}/a.png?sig=SECRET", 1024, policy=LOCAL, resolve=_loopback)
        assert "SECRET" not in str(exc.value)  # signed query strings stay out of messages
    assert len(srv.requests) == 1


def _loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def test_a_trickled_body_hits_the_total_deadline():
    """One byte every 50 ms keeps every read inside its timeout; the call has 0.5 s in all and
    the body would take 3 s."""

    def slow(seen: Seen, sock: socket.socket) -> None:
        trickle(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n" + b"x" * 60, 0.05)

    expected = re.escape("no complete response within 0.5s")
    with raw_server(slow) as (_srv, port), pytest.raises(netguard.FetchError, match=expected) as exc:
        netguard.fetch(f"http://images.example:{port}/a", 1024, policy=LOCAL, resolve=_loopback, total_timeout_s=0.5)
    assert exc.value.transient


def test_trickled_headers_hit_the_total_deadline():
    def slow(seen: Seen, sock: socket.socket) -> None:
        trickle(sock, b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 60 + b"\r\nContent-Length: 0\r\n\r\n", 0.05)

    with (
        raw_server(slow) as (_srv, port),
        pytest.raises(netguard.FetchError, match=re.escape("no complete response within 0.5s")),
    ):
        netguard.fetch(f"http://images.example:{port}/a", 1024, policy=LOCAL, resolve=_loopback, total_timeout_s=0.5)


def test_bodies_over_the_cap_are_aborted_streamed_or_declared():
    def endless(seen: Seen, sock: socket.socket) -> None:
        # No Content-Length: the body ends when the connection closes, after 8 MiB.
        sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(128):
            sock.sendall(b"x" * 65536)

    with raw_server(endless) as (_srv, port), pytest.raises(netguard.FetchError, match="larger than 1048576") as exc:
        netguard.fetch(f"http://images.example:{port}/a", 1 << 20, policy=LOCAL, resolve=_loopback)
    assert not exc.value.transient

    def declared(seen: Seen, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\nxx")

    with raw_server(declared) as (_srv, port), pytest.raises(netguard.FetchError, match="declares 104857600 bytes"):
        netguard.fetch(f"http://images.example:{port}/a", 1 << 20, policy=LOCAL, resolve=_loopback)


def test_storage_fetch_is_strict_by_default():
    """``fetch_https`` (manifest images) never takes the test opt-in: loopback is refused."""
    with (
        raw_server(lambda seen, sock: answer(sock, 200, b"x")) as (srv, port),
        pytest.raises(StorageError, match="loopback"),
    ):
        storage.fetch_https(f"https://127.0.0.1:{port}/a.png", 1024)
    assert srv.connections == 0
