"""API keys, sealed page tokens and the SSRF guard (with a real HTTP server on loopback)."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from core.models import ApiKey
from core.security import (
    API_KEY_PATTERN,
    BadToken,
    GuardedTransport,
    UnsafeURLError,
    address_allowed,
    authenticate,
    check_url,
    create_api_key,
    generate_api_key,
    open_token,
    seal_token,
    verify_api_key,
)
from core.settings import Settings

STRICT = Settings(secret_key="s" * 32)
LOOPBACK_OK = Settings(secret_key="s" * 32, url_allow_cidrs=("127.0.0.0/8",))


def test_generated_keys_are_unique_and_only_hash_is_kept() -> None:
    key, prefix, key_hash = generate_api_key()
    other, _, _ = generate_api_key()
    assert key != other and API_KEY_PATTERN.match(key)["prefix"] == prefix
    assert key not in key_hash and verify_api_key(key, key_hash)
    assert not verify_api_key(key[:-1] + ("A" if key[-1] != "A" else "B"), key_hash)


def test_create_and_authenticate_on_postgres(db_session) -> None:
    name = f"tenant-{uuid.uuid4().hex[:8]}"
    key = create_api_key(db_session, name, name="ci")
    row = authenticate(db_session, key)
    assert row is not None and row.tenant.name == name
    stored = db_session.get(ApiKey, row.id)
    assert key not in (stored.key_hash, stored.prefix)
    assert authenticate(db_session, key[:-2] + "xx") is None
    assert authenticate(db_session, "tm_000000000000_" + "a" * 43) is None
    assert authenticate(db_session, "Bearer junk") is None
    second = create_api_key(db_session, name)  # same tenant, second key
    assert authenticate(db_session, second).tenant_id == row.tenant_id


def test_page_tokens_are_opaque_tamper_proof_and_expire() -> None:
    token = seal_token({"created_at": "2026-01-01T00:00:00", "id": "abc"}, STRICT)
    assert "abc" not in token and "2026" not in token
    import base64

    assert b"abc" not in base64.urlsafe_b64decode(token + "==")
    assert open_token(token, STRICT) == {"created_at": "2026-01-01T00:00:00", "id": "abc"}
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (flipped, "", "!!!", "a" * 3000, token[:10]):
        with pytest.raises(BadToken):
            open_token(bad, STRICT)
    with pytest.raises(BadToken):
        open_token(token, Settings(secret_key="t" * 32))  # another server's key
    with pytest.raises(BadToken, match="expired"):
        open_token(
            token,
            Settings(secret_key="s" * 32, page_token_ttl_s=60).model_copy(update={"page_token_ttl_s": -1}),
        )


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
        "240.0.0.1",
    ],
)
def test_non_public_addresses_blocked(address: str) -> None:
    assert not address_allowed(address, STRICT)


def test_public_and_allow_listed_addresses() -> None:
    assert address_allowed("93.184.216.34", STRICT)
    assert address_allowed("2606:2800:220:1:248:1893:25c8:1946", STRICT)
    assert address_allowed("127.0.0.1", LOOPBACK_OK)
    assert not address_allowed("10.0.0.1", LOOPBACK_OK)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/v.mp4", "scheme-not-allowed"),
        ("file:///etc/passwd", "scheme-not-allowed"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme-not-allowed"),
        ("http://169.254.169.254/latest/meta-data/", "address-not-allowed"),
        ("http://[::ffff:169.254.169.254]/", "address-not-allowed"),
        ("http://127.0.0.1:6379/", "address-not-allowed"),
        ("http://localhost/", "address-not-allowed"),
        ("http://10.0.0.5/video.mp4", "address-not-allowed"),
        ("https://user:pw@example.com/v.mp4", "credentials-in-url"),
        ("https:///nohost", "malformed-url"),
        ("http://example.com:99999/", "malformed-url"),
        ("https://no-such-host.invalid/v.mp4", "unresolvable-host"),
        ("https://example.com/" + "a" * 3000, "url-too-long"),
    ],
)
def test_check_url_refuses(url: str, code: str) -> None:
    with pytest.raises(UnsafeURLError) as info:
        check_url(url, STRICT)
    assert info.value.code == code


def test_allow_lists_open_loopback_and_named_hosts() -> None:
    assert check_url("http://127.0.0.1:8000/x", LOOPBACK_OK) == ["127.0.0.1"]
    assert (
        check_url(
            "http://internal.example/x", Settings(secret_key="s" * 32, url_allow_hosts=("Internal.Example",))
        )
        == []
    )
    with pytest.raises(UnsafeURLError):
        check_url("http://127.0.0.1:8000/x", STRICT)


def test_guarded_transport_checks_the_address_it_connects_to(webhook_receiver, monkeypatch) -> None:
    # A "public" name that resolves to loopback at fetch time (DNS rebinding) is refused at connect.
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        if host == "rebind.example":
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = webhook_receiver.url.split(":")[2].split("/")[0]
    with httpx.Client(transport=GuardedTransport(STRICT)) as client, pytest.raises(httpx.ConnectError):
        client.post(f"http://rebind.example:{port}/hooks", content=b"{}")
    assert webhook_receiver.requests == []
    with httpx.Client(transport=GuardedTransport(LOOPBACK_OK)) as client:
        answer = client.post(f"http://rebind.example:{port}/hooks", content=b"{}")
    assert answer.status_code == 204 and len(webhook_receiver.requests) == 1
    assert webhook_receiver.requests[0].headers["host"] == f"rebind.example:{port}"


def test_resolve_redirects_rechecks_every_hop() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from core.security import resolve_redirects

    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            targets = {
                "/to-metadata": "http://169.254.169.254/latest/meta-data/",
                "/hop": "/final.mp4",
                "/loop": "/loop",
            }
            if self.path in targets:
                self.send_response(302)
                self.send_header("Location", targets[self.path])
            else:
                self.send_response(206)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert resolve_redirects(f"{base}/hop", LOOPBACK_OK) == f"{base}/final.mp4"
        with pytest.raises(UnsafeURLError) as info:
            resolve_redirects(f"{base}/to-metadata", LOOPBACK_OK)
        assert info.value.code == "address-not-allowed"
        with pytest.raises(UnsafeURLError, match="redirects"):
            resolve_redirects(f"{base}/loop", LOOPBACK_OK)
        with pytest.raises(UnsafeURLError):
            resolve_redirects(f"{base}/hop", STRICT)  # loopback itself not allowed by default
    finally:
        server.shutdown()
        server.server_close()
