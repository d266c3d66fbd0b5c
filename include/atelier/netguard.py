"""Outbound HTTP that an adversary cannot aim: the one guarded fetch for untrusted URLs (https
packshots from manifests, output URLs a provider returns) and the deadline/size limits every
provider call shares.

Three defences, each at the layer where it cannot be bypassed:

- **Address guard at connect time.** ``GuardedBackend`` is an httpcore network backend: every new
  TCP connection resolves the host once (with an injectable resolver), refuses it if *any* answer
  is not a public unicast address, and connects to the vetted address itself. TLS still uses the
  hostname (httpcore passes the origin host as SNI and verifies the certificate against it) and
  the Host header is untouched, so there is no second resolution for DNS rebinding to win, and no
  redirect, proxy or pooled connection skips the check (redirects are never followed; proxies
  and ``.netrc`` are ignored, ``trust_env=False``).
- **A total deadline per call.** Read/connect timeouts are per socket operation, so a server that
  trickles a byte a second keeps them happy for ever. ``send`` sets a deadline (a context
  variable, so pooled connections pick it up) and every socket read/write/connect waits at most
  until it; once it passes the call fails with ``DeadlineExceeded`` (a ``httpx.TimeoutException``).
- **A byte cap per call.** Bodies are streamed and the call aborts as soon as the declared
  ``Content-Length`` or the bytes received exceed ``max_bytes`` (``TooLarge``). The cap counts
  decoded bytes; ``Accept-Encoding: identity`` is asked for, and a server that compresses anyway
  can overshoot by at most one decoded 64 KiB read before the abort.

``Policy`` says what a client may reach. ``STRICT`` (https only, public addresses only) is the
default everywhere; ``TRUSTED`` is for endpoints an operator configured (a provider's own API),
which may be http and local. Tests that serve outputs from 127.0.0.1 opt in with an explicit
policy (``Policy(schemes=..., allow_networks=...)``); nothing relaxes the default silently.
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

# IPv6 ranges that are not public whatever Python's ``is_global`` says (it follows the IANA
# registry, which marks the NAT64 well-known prefix and 6to4 as globally reachable).
_NON_PUBLIC_V6 = (
    ipaddress.ip_network("::/96"),  # deprecated IPv4-compatible addresses (::a.b.c.d)
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): translates to anything
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are IPv4


class Refused(Exception):
    """The URL, or an address its host resolves to, is not allowed by the policy. Never retried."""


class TooLarge(Exception):
    """The response is larger than the caller's byte cap."""


class DeadlineExceeded(httpx.TimeoutException):
    """The whole call (connect, headers and body) did not finish within its total deadline."""


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would be delivered to: IPv4-mapped
    (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``) or 6to4 (``2002:AABB:CCDD::/48``)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def non_public_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be connected to (loopback, private, link-local, shared, reserved,
    multicast, or an IPv6 wrapper around one of those), or None for a public unicast address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = non_public_reason(inner)
        return f"an IPv6 wrapper of {inner} ({why})" if why else None
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (e.g. cloud metadata)"
    if not ip.is_global:
        return "private or reserved"
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in _NON_PUBLIC_V6):
        return "in a non-public IPv6 range"
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, looked up at call time)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:  # gaierror, or a resolver timeout
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


@dataclass(frozen=True)
class Policy:
    """What a guarded client may reach. The defaults are the strict production policy."""

    schemes: frozenset[str] = frozenset({"https"})
    vet_addresses: bool = True  # False only for operator-configured endpoints (TRUSTED)
    # Non-public networks explicitly allowed anyway (tests serving from 127.0.0.1 set this).
    allow_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_config(cls, allow_http: bool = False, allow_networks: Iterable[str] = ()) -> Policy:
        schemes = frozenset({"https", "http"} if allow_http else {"https"})
        return cls(schemes, True, tuple(ipaddress.ip_network(n) for n in allow_networks))

    def refusal(self, ip: IPAddress) -> str | None:
        """Why this policy refuses ``ip``, or None."""
        if not self.vet_addresses or any(ip in net for net in self.allow_networks):
            return None
        return non_public_reason(ip)


STRICT = Policy()
TRUSTED = Policy(frozenset({"https", "http"}), vet_addresses=False)


def redact(url: str | httpx.URL) -> str:
    """The URL without credentials, query or fragment (signed output URLs carry secrets there)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(unparseable URL)"


def check_url(url: str, policy: Policy = STRICT) -> None:
    """Refuses a URL whose scheme the policy does not allow or that carries credentials. (Its
    addresses are checked when the connection is made, so a rebinding resolver cannot pass.)"""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on an invalid port
    except ValueError as exc:
        raise Refused(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in policy.schemes:
        raise Refused(f"scheme {parts.scheme or '(none)'!r} is not allowed (only {', '.join(sorted(policy.schemes))})")
    if not parts.hostname:
        raise Refused("URL has no host")
    if parts.username or parts.password:
        raise Refused("credentials in URLs are not allowed")


# -- the total deadline, enforced at the socket ------------------------------------------------
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("atelier_netguard_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Every guarded socket operation in this block waits at most until ``seconds`` from now."""
    at = time.monotonic() + seconds
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


_DEADLINE_MESSAGE = "total deadline exceeded"


@contextmanager
def _within(timeout: float | None, exc: type[Exception]) -> Iterator[float | None]:
    """The timeout for one socket operation: ``timeout`` cut to what is left of the deadline. A
    timeout that the deadline caused is raised as ``exc("total deadline exceeded")``."""
    at = _deadline.get()
    if at is None:
        yield timeout
        return
    remaining = at - time.monotonic()
    if remaining <= 0:
        raise exc(_DEADLINE_MESSAGE)
    if timeout is not None and timeout < remaining:
        yield timeout
        return
    try:
        yield remaining
    except httpcore.TimeoutException:
        raise exc(_DEADLINE_MESSAGE) from None


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _within(timeout, httpcore.ReadTimeout) as bound:
            return self.inner.read(max_bytes, bound)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _within(timeout, httpcore.WriteTimeout) as bound:
            self.inner.write(buffer, bound)

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        with _within(timeout, httpcore.ConnectTimeout) as bound:
            return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, bound))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves once, vets every answer against the policy, connects to a vetted address."""

    def __init__(self, policy: Policy, resolve: Resolver | None = None):
        self.policy = policy
        self.resolve = resolve or system_resolve
        self.inner = httpcore.SyncBackend()

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to; raises Refused if any answer is not allowed."""
        host = host.strip("[]")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if not self.policy.vet_addresses:
            return [host]
        answers = [str(literal)] if literal is not None else self.resolve(host, port)
        if not answers:
            raise httpcore.ConnectError(f"{host} has no addresses")
        for answer in answers:
            why = self.policy.refusal(ipaddress.ip_address(answer))
            if why:
                where = f"address {answer}" if literal is not None else f"host {host} resolves to {answer}, which"
                raise Refused(f"{where} is {why}")
        return answers

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.addresses(host, port):
            try:
                with _within(timeout, httpcore.ConnectTimeout) as bound:
                    stream = self.inner.connect_tcp(address, port, bound, local_address, socket_options)
                return _DeadlineStream(stream)
            except httpcore.ConnectError as exc:  # try the next vetted address
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise Refused("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@cache
def _default_ssl_context() -> ssl.SSLContext:
    """certifi's CA bundle, loaded once (about 20 ms of CPU each time otherwise; a context is
    safe to share between threads and connections)."""
    return ssl.create_default_context(cafile=certifi.where())


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a ``GuardedBackend`` (HTTP/1.1, no proxy), refusing other schemes."""

    def __init__(
        self,
        policy: Policy,
        resolve: Resolver | None = None,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | None = None,
    ):
        context = verify or _default_ssl_context()
        super().__init__(verify=context, trust_env=False)
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self.policy = policy
        # httpx builds its pool without a network_backend parameter: replace it with one over the
        # guarded backend (same ssl/limit settings httpx would use).
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolve),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in self.policy.schemes:
            raise Refused(f"scheme {request.url.scheme!r} is not allowed")
        return super().handle_request(request)


def client(
    policy: Policy = STRICT,
    timeout: httpx.Timeout | None = None,
    headers: dict[str, str] | None = None,
    resolve: Resolver | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.Client:
    """A client whose every connection goes through the policy. It carries only ``headers``: it
    keeps no cookies, reads no env proxies or ``.netrc``, and follows no redirects. ``verify``
    replaces the certifi CA bundle (tests with their own CA)."""
    return httpx.Client(
        transport=GuardedTransport(policy, resolve, verify=verify),
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        timeout=timeout or httpx.Timeout(10.0, connect=5.0),
        headers={"Accept-Encoding": "identity", **(headers or {})},
        follow_redirects=False,
        trust_env=False,
    )


def send(
    http: httpx.Client, method: str, url: str, *, max_bytes: int, total_timeout_s: float, **kwargs: Any
) -> httpx.Response:
    """One request, finished within ``total_timeout_s`` and read into memory up to ``max_bytes``.

    Returns the response with its body read for 2xx (other statuses come back with an empty body:
    callers report the status, never the remote text). Raises Refused (policy), TooLarge,
    DeadlineExceeded, or httpx errors as they come."""
    with deadline(total_timeout_s) as at:
        try:
            with http.stream(method, url, **kwargs) as resp:
                if not 200 <= resp.status_code < 300:
                    return httpx.Response(resp.status_code, headers=_plain(resp.headers), request=resp.request)
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise TooLarge(f"response declares {declared} bytes (max {max_bytes})")
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"response is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                    if time.monotonic() > at:
                        raise DeadlineExceeded(f"no complete response within {total_timeout_s:g}s")
        except httpx.TimeoutException as exc:
            if not isinstance(exc, DeadlineExceeded) and (str(exc) == _DEADLINE_MESSAGE or time.monotonic() >= at):
                raise DeadlineExceeded(f"no complete response within {total_timeout_s:g}s") from exc
            raise
    return httpx.Response(
        resp.status_code, headers=_plain(resp.headers), content=b"".join(chunks), request=resp.request
    )


def _plain(headers: httpx.Headers) -> list[tuple[str, str]]:
    """Headers for a response rebuilt from decoded bytes (no encoding/length to re-apply)."""
    drop = {"content-encoding", "content-length", "transfer-encoding"}
    return [(k, v) for k, v in headers.multi_items() if k.lower() not in drop]


class FetchError(Exception):
    """A guarded fetch failed. ``transient``: a retry later may succeed (timeouts, connection
    errors, 429/5xx); ``status``: the HTTP status when the server answered."""

    def __init__(self, message: str, transient: bool, status: int | None = None):
        super().__init__(message)
        self.transient, self.status = transient, status


def fetch(
    url: str,
    max_bytes: int,
    *,
    policy: Policy = STRICT,
    http: httpx.Client | None = None,
    total_timeout_s: float = 60.0,
    resolve: Resolver | None = None,
) -> bytes:
    """GETs an untrusted URL under ``policy`` (a fresh credential-free client unless ``http`` is
    given) and returns its body. Raises Refused for what the policy forbids, FetchError otherwise;
    messages name the URL without its query and never include the remote body."""
    check_url(url, policy)
    shown = redact(url)
    own = http is None
    http = http or client(policy, resolve=resolve)
    try:
        resp = send(http, "GET", url, max_bytes=max_bytes, total_timeout_s=total_timeout_s)
    except TooLarge as exc:
        raise FetchError(f"GET {shown}: {exc}", transient=False) from None
    except httpx.TimeoutException as exc:
        raise FetchError(
            f"GET {shown} timed out ({exc if isinstance(exc, DeadlineExceeded) else type(exc).__name__})", True
        ) from None
    except httpx.InvalidURL as exc:
        raise Refused(f"not a valid URL ({exc})") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {shown} failed ({type(exc).__name__})", transient=True) from None
    finally:
        if own:
            http.close()
    if resp.status_code != 200:
        transient = resp.status_code == 429 or resp.status_code >= 500
        raise FetchError(
            f"GET {shown} answered {resp.status_code} {phrase(resp.status_code)}", transient, resp.status_code
        )
    return resp.content


def phrase(status: int) -> str:
    """A fixed reason for a status code (from the standard library, never the remote body)."""
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"
