"""`serve` on Cloud Run: K_SERVICE, and Cloud Scheduler's OIDC ID tokens (`api.oidc`).

The tokens are signed by a test key whose JWKS a loopback server publishes, as Google
publishes its own at https://www.googleapis.com/oauth2/v3/certs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ocimirror.service.oidc import OidcVerifier, TokenRejected
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.scripted import ScriptedHandler, ScriptedServer
from test_serve import Server, listening_addresses

AUDIENCE = "https://mirror-abc-uc.a.run.app"
EMAIL = "scheduler@project.iam.gserviceaccount.com"
NOW = 1_800_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _num(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Jwks:
    """A loopback server publishing a JWKS document; counts how often it is fetched."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0
        jwks = self

        class Handler(ScriptedHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                pub = jwks.key.public_key().public_numbers()
                doc = {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1",
                                 "n": _num(pub.n), "e": _num(pub.e)}]}  # fmt: skip
                self.answer(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

        self.server = ScriptedServer(Handler)
        self.url = f"http://{self.server.host}/oauth2/v3/certs"

    def token(self, key: rsa.RSAPrivateKey | None = None, kid: str = "k1", **claims: Any) -> str:
        """An ID token as Google issues one to a service account, claims overridable."""
        body = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": EMAIL,
                "email_verified": True, "iat": NOW - 10, "exp": NOW + 3590,
                "sub": "1234567890"} | claims  # fmt: skip
        head = _b64(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
        signing = f"{head}.{_b64(json.dumps(body).encode())}"
        sig = (key or self.key).sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(sig)}"

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers that are stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, *args, env=env)
        started.append(server)
        return server

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.close()


def rejections(jwks: Jwks) -> dict[str, str]:
    """Tokens that must be refused, by what is wrong with them."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "expired": jwks.token(exp=NOW - 3600, iat=NOW - 7200),
        "wrong audience": jwks.token(aud="https://someone-else.a.run.app"),
        "email not allowed": jwks.token(email="intruder@evil.iam.gserviceaccount.com"),
        "bad signature": jwks.token(key=other),
        "wrong issuer": jwks.token(iss="https://evil.example"),
        "signed by an unknown key": jwks.token(kid="k2"),
        # Algorithm confusion: HS256 keyed with the public key's PEM, and no signature.
        "not signed with RS256": _confused(jwks, "HS256"),
        "not signed with RS256 ": _confused(jwks, "none"),
        "not a JWT": "x" * 20_000 + ".a.b",
        # A header nested past the JSON parser's depth (a RecursionError, once a 500).
        "not JSON": _b64(b"[" * 2_000) + ".e30.sig",
    }


def _confused(jwks: Jwks, alg: str) -> str:
    """A token that names another algorithm than RS256 (the classic forgeries)."""
    pem = jwks.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good = jwks.token()
    body = good.split(".")[1]
    head = _b64(json.dumps({"alg": alg, "kid": "k1", "typ": "JWT"}).encode())
    signing = f"{head}.{body}".encode()
    sig = _b64(hmac.new(pem, signing, hashlib.sha256).digest()) if alg == "HS256" else ""
    return f"{head}.{body}.{sig}"


async def test_the_verifier_accepts_google_shaped_tokens_and_names_each_refusal(
    jwks: Jwks,
) -> None:
    clock = [float(NOW)]
    verifier = OidcVerifier(
        [AUDIENCE], [EMAIL], jwks_url=jwks.url, ttl=3600, clock=lambda: clock[0]
    )
    claims = await verifier.verify(jwks.token())
    assert claims["email"] == EMAIL
    assert await verifier.accepts(jwks.token(iss="accounts.google.com"))  # Google writes both
    for reason, token in rejections(jwks).items():
        with pytest.raises(TokenRejected, match=reason.strip()):
            await verifier.verify(token)
    # The keys are cached: one fetch so far (the unknown kid refetches at most once a minute).
    assert jwks.fetches == 1
    clock[0] += 3600  # the TTL ran out: fetched again
    assert await verifier.accepts(jwks.token(iat=NOW + 3590, exp=NOW + 7000))
    assert jwks.fetches == 2
    with pytest.raises(TokenRejected, match="not a JWT"):
        await verifier.verify("static-token")


def _config(tmp_path: Path, jwks: Jwks, *, tokens: bool) -> Path:
    path = tmp_path / "serve.yaml"
    static = "  tokens: [s3cret]\n" if tokens else ""
    path.write_text(
        f"api:\n{static}  oidc:\n    audience: {AUDIENCE}\n    emails: [{EMAIL}]\n"
        f"    jwks_url: {jwks.url}\n"
    )
    return path


def test_cloud_scheduler_oidc_call_with_authentication_on(
    server_factory: Callable[..., Server],
    jwks: Jwks,
    tmp_path: Path,
) -> None:
    import time

    now = int(time.time())
    server = server_factory("-c", str(_config(tmp_path, jwks, tokens=True)))
    body = {"mirrors": []}
    good = jwks.token(iat=now - 10, exp=now + 3590)
    # Cloud Scheduler sends its OIDC token with any Content-Type: an authenticated caller.
    answer = server.call("POST", "/", json.dumps(body).encode(), token=good,
                         headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert (answer.status, answer.body) == (200, b'{"ok":true}\n')
    assert server.call("POST", "/", body, token="s3cret").status == 200  # static still works
    for reason, token in rejections(jwks).items():
        # A 20 kB header is refused by the HTTP server itself, before the policy (400).
        expected = 400 if reason == "not a JWT" else 401
        assert server.call("POST", "/", body, token=token).status == expected, reason
    expired_now = jwks.token(iat=now - 7200, exp=now - 3600)
    assert server.call("POST", "/", body, token=expired_now).status == 401
    assert server.call("POST", "/", body).status == 401
    assert good not in server.text()
    assert "ID token refused" in server.text()


def test_on_cloud_run_it_listens_on_every_interface_and_says_iam_guards_it(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(env={"K_SERVICE": "mirror"})
    assert listening_addresses(server.port) == {"0.0.0.0"}
    wait_for(lambda: "access is left to the platform's IAM" in server.text(), "the IAM line")
    assert "no API token configured" not in server.text()
    # POST / as Cloud Scheduler sends it, any type: IAM authenticated it in front.
    answer = server.call("POST", "/", b'{"mirrors":[]}', headers={"Content-Type": "text/plain"})
    assert answer.status == 200
