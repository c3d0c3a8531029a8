"""The service's security primitives: API keys, sealed page tokens, and the outbound-URL (SSRF) guard.

API keys look like `tm_<12 hex prefix>_<43 url-safe secret>`; only SHA-256 of the whole key is stored,
found by its public prefix and compared in constant time (random 256-bit secrets need no slow hash).
Page tokens are AES-GCM sealed with a key derived from `Settings.secret_key`: opaque to clients,
tamper-proof, and they expire. The URL guard refuses non-http(s) schemes, credentials in URLs and any
host whose DNS answers include loopback, link-local (169.254.169.254), private, shared or reserved
addresses, unless `Settings.url_allow_cidrs` / `url_allow_hosts` allow it; `GuardedTransport` re-checks
the address it actually connects to, so DNS rebinding between check and fetch gains nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey, Tenant
from core.settings import Settings

# ------------------------------------------------------------------------------------------ API keys

API_KEY_PATTERN = re.compile(r"^tm_(?P<prefix>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"timemark-no-such-key").hexdigest()


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str, str]:
    """A new key: `(key, prefix, key_hash)`; show `key` once, store `prefix` and `key_hash`."""
    prefix = secrets.token_hex(6)
    key = f"tm_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_api_key(key)


def verify_api_key(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), key_hash)


def create_api_key(session: Session, tenant_name: str, *, name: str | None = None) -> str:
    """Create the tenant if needed and a key for it; commits, returns the key (shown once)."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key, prefix, key_hash = generate_api_key()
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=key_hash, name=name))
    session.commit()
    return key


def authenticate(session: Session, key: str) -> ApiKey | None:
    """The live `ApiKey` row (tenant joined) for `key`, or None; constant time in the secret part."""
    match = API_KEY_PATTERN.match(key)
    if match is None:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == match["prefix"]))
    # Compare even when the prefix is unknown, so timing says nothing about which prefixes exist.
    ok = verify_api_key(key, row.key_hash if row is not None else _DUMMY_HASH)
    if row is None or not ok or row.revoked_at is not None:
        return None
    return row


# --------------------------------------------------------------------------------------- Page tokens


class BadToken(ValueError):
    """A page token that was tampered with, expired, or made for another listing."""


def _token_key(settings: Settings) -> bytes:
    secret = settings.secret_key.get_secret_value().encode("utf-8")
    return hmac.new(secret, b"timemark page tokens v1", hashlib.sha256).digest()


def seal_token(payload: dict[str, Any], settings: Settings) -> str:
    """Encrypt + authenticate `payload` (JSON-safe) with an issue time; URL-safe, unpadded."""
    nonce = os.urandom(12)
    plain = json.dumps({"p": payload, "t": int(time.time())}, separators=(",", ":")).encode()
    sealed = nonce + AESGCM(_token_key(settings)).encrypt(nonce, plain, b"page")
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def open_token(token: str, settings: Settings) -> dict[str, Any]:
    """The payload of a token made by `seal_token`; raises `BadToken` if forged, garbled or expired."""
    if not token or len(token) > 2048:
        raise BadToken("page token has an invalid length")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        plain = AESGCM(_token_key(settings)).decrypt(raw[:12], raw[12:], b"page")
        body = json.loads(plain)
    except (ValueError, InvalidTag) as err:
        raise BadToken("page token is not valid") from err
    if time.time() - body["t"] > settings.page_token_ttl_s:
        raise BadToken("page token has expired")
    return body["p"]


# ---------------------------------------------------------------------------------------- URL guard


class UnsafeURLError(ValueError):
    """An outbound URL the guard refuses; `code` is a stable slug for the problem document."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_allowed(address: str | IPAddress, settings: Settings) -> bool:
    """True for public unicast addresses and for anything inside `settings.url_allow_cidrs`."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    for cidr in settings.url_allow_cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if ip.version == network.version and ip in network:
            return True
    # is_global is False for loopback, link-local, private, shared (100.64/10), reserved, unspecified.
    return ip.is_global and not ip.is_multicast


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (literal IPs resolve to themselves)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UnsafeURLError("unresolvable-host", f"host {host!r} does not resolve") from err
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def check_url(url: str, settings: Settings, *, resolve: bool = True) -> list[str]:
    """Refuse `url` unless it is http(s) to an allowed host; returns the checked addresses.

    Checks the scheme, credentials, port, then every DNS answer (one bad answer refuses the URL: a
    resolver that mixes public and private answers is an attack, not an accident).
    """
    if len(url) > 2048:
        raise UnsafeURLError("url-too-long", "URL is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UnsafeURLError("malformed-url", f"URL is malformed: {err}") from err
    scheme = parts.scheme.lower()
    if scheme not in settings.url_allowed_schemes:
        raise UnsafeURLError("scheme-not-allowed", f"scheme {scheme or '(none)'!r} is not allowed")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("credentials-in-url", "URLs may not carry user names or passwords")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeURLError("malformed-url", "URL has no host")
    if host in settings.url_allow_hosts:
        return []
    port = port or (443 if scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    elif resolve:
        addresses = resolve_host(host, port)
    else:
        return []
    for address in addresses:
        if not address_allowed(address, settings):
            raise UnsafeURLError("address-not-allowed", f"host {host!r} resolves to a non-public address")
    return addresses


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks, then connects to the checked address itself (TLS still verifies the host name)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve_host(host, port)
        except UnsafeURLError as err:
            raise httpcore.ConnectError(err.detail) from err
        if host.lower().rstrip(".") not in self._settings.url_allow_hosts:
            for address in addresses:
                if not address_allowed(address, self._settings):
                    raise httpcore.ConnectError(f"refused non-public address for {host!r}")
        return self._inner.connect_tcp(addresses[0], port, timeout, local_address, socket_options)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for outbound requests")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every connection goes through the URL guard (no proxies from env).

    Use with `follow_redirects=False` and check each `Location` with `check_url` before following it.
    """

    def __init__(self, settings: Settings, *, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(trust_env=False)
        ssl_context = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        )
        # httpx has no public hook for the network backend, so the pool is rebuilt with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=20, network_backend=_GuardedBackend(settings)
        )


def guarded_client(settings: Settings, *, timeout_s: float = 15.0) -> httpx.Client:
    """An httpx client for user-supplied URLs (webhooks, video fetches): guarded, no redirects."""
    return httpx.Client(transport=GuardedTransport(settings), timeout=timeout_s, follow_redirects=False)


def resolve_redirects(url: str, settings: Settings, *, timeout_s: float = 10.0) -> str:
    """Follow `url`'s redirects by hand, checking every hop with the guard; returns the final URL.

    For readers that follow redirects on their own (PyAV/FFmpeg): hand them the URL this returns,
    so a public URL that redirects to 169.254.169.254 is refused here instead of fetched there.
    """
    check_url(url, settings)
    with guarded_client(settings, timeout_s=timeout_s) as client:
        for _ in range(settings.url_max_redirects + 1):
            try:
                # A one-byte ranged GET: some servers answer HEAD differently from GET.
                with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as answer:
                    location = answer.headers.get("location") if answer.is_redirect else None
            except httpx.HTTPError as err:
                raise UnsafeURLError(
                    "fetch-failed", f"could not fetch the URL: {type(err).__name__}"
                ) from err
            if location is None:
                return url
            url = str(httpx.URL(url).join(location))
            check_url(url, settings)
    raise UnsafeURLError("too-many-redirects", f"more than {settings.url_max_redirects} redirects")
