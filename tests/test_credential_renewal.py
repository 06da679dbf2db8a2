"""Credentials that change while ocimirror runs: expiry, re-asking, a 401 answered once.

The keychain's cache is tested with an injected clock (no sleeping); the client's retry on
refused credentials against real registries (htpasswd, and a token server); and the whole
story with `ocimirror run`: a credential helper whose answer changes while the daemon is
up and the registry's password is rotated.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocimirror.auth.credentials import (
    Credentials,
    DockerConfigSource,
    HelperSource,
    Keychain,
    Resolved,
    StaticSource,
)
from ocimirror.errors import AuthError
from ocimirror.testkit.command import Background
from ocimirror.testkit.images import make_image
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import connect, seed
from ocimirror.testkit.tokenserver import TokenServer

OLD = Credentials("alice", "wonderland")
NEW = Credentials("alice", "looking-glass")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Scripted:
    """A source that answers from a list, one answer per question (the last one repeats)."""

    answers: list[Resolved | None]
    asked: list[str] = field(default_factory=list)

    async def credentials_for(self, host: str) -> Resolved | None:
        self.asked.append(host)
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


# --------------------------------------------------------------------------- the keychain


async def test_the_first_source_that_answers_wins_in_order() -> None:
    nothing = Scripted([None])
    first = Scripted([Resolved(OLD, source="first")])
    second = Scripted([Resolved(NEW, source="second")])
    keychain = Keychain(sources=[nothing, first, second])
    assert await keychain.resolve("https://Reg.example:5000/v2/") == OLD
    assert nothing.asked == first.asked == ["reg.example:5000"]
    assert second.asked == []  # never asked once an earlier source answered
    # Nobody answers: anonymous.
    assert (await Keychain(sources=[nothing]).resolve("reg.example")).anonymous


async def test_standard_order_static_then_helper_then_auth_files(
    tmp_path: Path, rotating_helper: RotatingHelper
) -> None:
    rotating_helper.answer("from-helper", "pw")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"auths": {h: {"username": "file", "password": "pw"} for h in "abc"}})
    )
    keychain = Keychain(
        config_path=config,
        overrides={"a": Credentials("static", "pw")},
        helpers={"a": "testrot", "b": "testrot"},
    )
    assert [type(s) for s in keychain.sources] == [StaticSource, HelperSource, DockerConfigSource]
    assert await keychain.resolve("a") == Credentials("static", "pw")
    assert await keychain.resolve("b") == Credentials("from-helper", "pw")
    assert await keychain.resolve("c") == Credentials("file", "pw")
    assert rotating_helper.calls() == 1  # only for "b": "a" was answered before


async def test_credentials_are_asked_again_shortly_before_they_expire() -> None:
    clock = Clock()
    source = Scripted(
        [Resolved(OLD, expires_at=clock.now + 3600), Resolved(NEW, expires_at=clock.now + 7200)]
    )
    keychain = Keychain(sources=[source], clock=clock)
    assert await keychain.resolve("reg.example") == OLD
    clock.now += 3600 - 61  # a minute and a second before the end: still good
    assert await keychain.resolve("reg.example") == OLD
    assert len(source.asked) == 1
    clock.now += 2  # inside the last minute: renewed before the registry refuses them
    assert await keychain.resolve("reg.example") == NEW
    assert len(source.asked) == 2


async def test_short_lived_credentials_are_renewed_halfway() -> None:
    clock = Clock()
    source = Scripted([Resolved(OLD, expires_at=clock.now + 30), Resolved(NEW)])
    keychain = Keychain(sources=[source], clock=clock)
    assert await keychain.resolve("reg.example") == OLD
    clock.now += 14
    assert await keychain.resolve("reg.example") == OLD
    clock.now += 1
    assert await keychain.resolve("reg.example") == NEW
    # Without an expiry nor a max age: kept until invalidated.
    clock.now += 10**9
    assert await keychain.resolve("reg.example") == NEW
    assert len(source.asked) == 2


async def test_a_helper_answer_is_asked_again_after_its_max_age(
    rotating_helper: RotatingHelper,
) -> None:
    clock = Clock()
    rotating_helper.answer("alice", "one")
    keychain = Keychain(helpers={"reg.example": "testrot"}, helper_max_age=300, clock=clock)
    assert await keychain.resolve("reg.example") == Credentials("alice", "one")
    rotating_helper.answer("alice", "two")
    clock.now += 299
    assert await keychain.resolve("reg.example") == Credentials("alice", "one")
    assert rotating_helper.calls() == 1
    clock.now += 1
    assert await keychain.resolve("reg.example") == Credentials("alice", "two")
    assert rotating_helper.calls() == 2


async def test_invalidate_after_a_refusal_asks_once_for_many_callers() -> None:
    source = Scripted([Resolved(OLD), Resolved(NEW)])
    keychain = Keychain(sources=[source])
    assert await keychain.resolve("reg.example") == OLD

    async def renew() -> Credentials:
        keychain.invalidate("reg.example", stale=OLD)
        return await keychain.resolve("reg.example")

    assert await asyncio.gather(*(renew() for _ in range(5))) == [NEW] * 5
    assert len(source.asked) == 2
    # Invalidating credentials no longer cached changes nothing.
    keychain.invalidate("reg.example", stale=OLD)
    assert await keychain.resolve("reg.example") == NEW
    assert len(source.asked) == 2


def test_sources_and_standard_settings_do_not_mix() -> None:
    with pytest.raises(ValueError, match="either sources"):
        Keychain(sources=[], helpers={"a": "b"})


# --------------------------------------------------------------------------- the client


async def test_a_rotated_password_is_renewed_once_and_the_request_succeeds(
    htpasswd_registry: LocalRegistry,
) -> None:
    source = Scripted([Resolved(OLD), Resolved(NEW)])
    async with connect(htpasswd_registry.host, keychain=Keychain(sources=[source])) as client:
        assert await client.head_manifest("app", "latest") is None  # logged in: a 404
        assert len(source.asked) == 1
        htpasswd_registry.rotate_password("alice", NEW.password)
        before = client.requests["HEAD"]
        # The cached password is refused: the keychain is asked again, the request retried.
        assert await client.head_manifest("app", "latest") is None
        assert len(source.asked) == 2
        assert client.requests["HEAD"] - before == 2
        assert client.credentials == NEW


async def test_concurrent_refusals_renew_once_and_all_succeed(
    htpasswd_registry: LocalRegistry,
) -> None:
    source = Scripted([Resolved(OLD), Resolved(NEW)])
    async with connect(htpasswd_registry.host, keychain=Keychain(sources=[source])) as client:
        assert await client.head_manifest("app", "latest") is None
        htpasswd_registry.rotate_password("alice", NEW.password)
        # Eight requests refused at once: the keychain is asked once, every one retried.
        results = await asyncio.gather(*(client.head_manifest("app", f"t{i}") for i in range(8)))
        assert results == [None] * 8
        assert len(source.asked) == 2


async def test_a_wrong_password_fails_after_two_attempts(
    htpasswd_registry: LocalRegistry,
) -> None:
    wrong = [Credentials("alice", "nope"), Credentials("alice", "still-nope")]
    source = Scripted([Resolved(c) for c in wrong])
    async with connect(htpasswd_registry.host, keychain=Keychain(sources=[source])) as client:
        with pytest.raises(AuthError) as caught:
            await client.head_manifest("app", "latest")
        assert caught.value.status == 401
        # One request learns the challenge, then one per password: two attempts, no more.
        assert client.requests["HEAD"] == 3
        assert client.statuses[401] == 3
        assert len(source.asked) == 2


async def test_the_same_password_again_is_not_retried(htpasswd_registry: LocalRegistry) -> None:
    source = Scripted([Resolved(Credentials("alice", "nope"))])
    async with connect(htpasswd_registry.host, keychain=Keychain(sources=[source])) as client:
        with pytest.raises(AuthError):
            await client.head_manifest("app", "latest")
        assert client.requests["HEAD"] == 2  # the keychain had nothing newer to try
        assert len(source.asked) == 2


async def test_fixed_credentials_are_never_renewed(htpasswd_registry: LocalRegistry) -> None:
    async with connect(htpasswd_registry.host, credentials=Credentials("alice", "nope")) as client:
        with pytest.raises(AuthError):
            await client.head_manifest("app", "latest")
        assert client.requests["HEAD"] == 2


async def test_a_token_service_refusing_cached_credentials_gets_fresh_ones(
    token_registry: LocalRegistry, token_server: TokenServer
) -> None:
    old, new = Credentials("bob", "builder"), Credentials("bob", "rebuilt")
    source = Scripted([Resolved(old), Resolved(new)])
    async with connect(token_registry.host, keychain=Keychain(sources=[source])) as client:
        assert await client.head_manifest("app", "latest") is None
        token_server.users["bob"] = new.password
        # The tokens we hold are dropped (as if expired): the next one needs the password,
        # which the token service now refuses.
        client.auth.use(Credentials())
        client.auth.use(old)
        assert await client.head_manifest("app", "latest") is None
        assert len(source.asked) == 2
        assert client.requests["TOKEN"] == 3  # old (ok), old (refused), new (ok)
        assert client.credentials == new


# --------------------------------------------------------------------------- the daemon


class RotatingHelper:
    """`docker-credential-testrot` on PATH: answers what `answer()` last wrote."""

    def __init__(self, directory: Path) -> None:
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        self.answer_file = directory / "answer.json"
        self.calls_file = directory / "calls"
        script = self.bin / "docker-credential-testrot"
        script.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            "sys.stdin.read()\n"
            f"open({str(self.calls_file)!r}, 'a').write('get\\n')\n"
            f"sys.stdout.write(open({str(self.answer_file)!r}).read())\n"
        )
        script.chmod(0o755)

    def answer(self, username: str, secret: str) -> None:
        """Make the helper answer with these credentials from now on."""
        self.answer_file.write_text(json.dumps({"Username": username, "Secret": secret}))

    def calls(self) -> int:
        """Return how many times the helper was asked."""
        if not self.calls_file.exists():
            return 0
        return len(self.calls_file.read_text().splitlines())

    @property
    def path(self) -> str:
        """Return a PATH with the helper first."""
        return f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture
def rotating_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RotatingHelper:
    """The `testrot` credential helper, on this process's PATH."""
    helper = RotatingHelper(tmp_path / "helper")
    monkeypatch.setenv("PATH", helper.path)
    return helper


def test_run_survives_a_password_rotation_without_a_restart(
    htpasswd_registry: LocalRegistry,
    dst_registry: LocalRegistry,
    rotating_helper: RotatingHelper,
    tmp_path: Path,
) -> None:
    src = htpasswd_registry
    asyncio.run(seed(src, "lib/a", [("1", make_image(layer_size=500, seed="r1"))]))
    rotating_helper.answer("alice", OLD.password)
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "registries:\n"
        f"  {src.host}:\n"
        "    credentials:\n"
        "      helper: testrot\n"
        "mirrors:\n"
        "  - name: a\n"
        f"    source: {src.host}/lib/a\n"
        f"    targets: [{dst_registry.host}/mirror/a]\n"
        "    schedule: 1s\n"
    )
    daemon = Background(["run", "-c", str(config)], tmp_path / "daemon.log", env={**os.environ})
    try:
        wait_for(lambda: dst_registry.tags("mirror/a") == ["1"], "the first pass")
        asked = rotating_helper.calls()
        # The operator rotates the password and the helper's answer follows.
        src.rotate_password("alice", NEW.password)
        rotating_helper.answer("alice", NEW.password)
        asyncio.run(seed(src, "lib/a", [("2", make_image(layer_size=500, seed="r2"))]))
        wait_for(lambda: dst_registry.tags("mirror/a") == ["1", "2"], "a pass after rotation")
        assert daemon.proc.poll() is None  # the same process: no restart
        assert rotating_helper.calls() > asked
        assert "credentials refused, retrying with fresh ones" in daemon.text()
        assert NEW.password not in daemon.text()
        assert OLD.password not in daemon.text()
    finally:
        daemon.kill()


async def test_an_auth_file_changed_meanwhile_is_read_again(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"reg.example": {"username": "a", "password": "1"}}}))
    keychain = Keychain(config_path=config)
    assert await keychain.resolve("reg.example") == Credentials("a", "1")
    # `docker login` writes a new password; the registry refuses the old one.
    config.write_text(json.dumps({"auths": {"reg.example": {"username": "a", "password": "22"}}}))
    keychain.invalidate("reg.example")
    assert await keychain.resolve("reg.example") == Credentials("a", "22")
    # Half written: the last good read stays.
    config.write_text("{")
    keychain.invalidate("reg.example")
    assert await keychain.resolve("reg.example") == Credentials("a", "22")
