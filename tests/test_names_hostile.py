"""Hostile names on their way into storage (issue 18): repository names, tags, digests and
`oci:`/`file://` paths with `..`, `%2e%2e`, absolute paths, NUL, CR/LF and overlong parts,
each sent through the face a user or an attacker would use: the command line, a config
file, the service's POST body, a registry's tag list, the proxy's URL in front of a cache.

What must hold: a clear error naming what is wrong (no traceback), no request for it to
any registry, and no file or object written anywhere (a snapshot of the working directory
before and after)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from ocimirror.cli import app
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.front import Front, kind_of
from ocimirror.testkit.images import make_image
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from test_proxy_hostile import TRAVERSALS
from test_serve import Server

APP = make_image(layer_size=300, seed="names")


def tree(root: Path) -> set[str]:
    """Every file and directory under `root`, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def outside(root: Path, allowed: Path) -> set[str]:
    """Files under `root` but not under `allowed` (what an escape would have written)."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and allowed not in p.parents and not p.name.endswith(".log")
    }


# -- the command line and the config file ----------------------------------------------------


def hostile_references(registry: str, tmp: Path) -> list[tuple[str, str]]:
    """(reference, what its error says) for names that must never be opened or asked for."""
    return [
        (f"oci:{tmp}/layout:../../escape", "invalid tag '../../escape'"),
        (f"oci:{tmp}/layout:a/b", "invalid tag 'a/b'"),
        (f"oci:{tmp}/lay\r\nout:1", "contains a control character ('\\r')"),
        (f"oci:{tmp}/layout@sha256:../../../etc/passwd", "invalid tag"),
        (f"file://{tmp}/bucket//../escape:1", "invalid repository path component '..'"),
        (f"file://{tmp}/bucket//app:..", "invalid tag '..'"),
        (f"{registry}/../escape:1", "invalid repository path component '..'"),
        (f"{registry}/a/%2e%2e/b:1", "invalid repository path component '%2e%2e'"),
        (f"{registry}/app:1\r\nX-Evil: 1", "contains a control character ('\\r')"),
        (f"{registry}/app@sha256:../../etc", "invalid digest"),
        (f"{registry}/" + "a" * 300 + ":1", "longer than 255 characters"),
        (f"{registry}/app:" + "a" * 129, "invalid tag"),
        ("/etc/passwd", "invalid repository path component ''"),
    ]


def test_hostile_references_on_the_command_line_are_refused_before_anything(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """As a source and as a destination: exit 2, one `error:` line naming the fault, no
    request to the registry, nothing written."""
    asyncio_seed(registry)
    before = tree(tmp_path)
    mark = registry.mark()
    good = f"{registry.host}/app:1"
    cli = CliRunner()
    for ref, says in hostile_references(registry.host, tmp_path):
        for args in ((good, ref), (ref, f"oci:{tmp_path}/layout:1")):
            out = cli.invoke(app, ["copy", *args])
            assert out.exit_code == 2, (ref, out.output)
            assert out.stderr.startswith("error: "), (ref, out.stderr)
            assert says in out.stderr, (ref, out.stderr)
            assert out.exception is None or isinstance(out.exception, SystemExit), ref
    # And once as a process, as a user runs it.
    ref, says = hostile_references(registry.host, tmp_path)[2]
    process = run_ocimirror("copy", good, ref)
    assert process.returncode == 2
    assert process.stderr.startswith("error: ")
    assert says in process.stderr
    assert "Traceback" not in process.stderr
    assert registry.requests(since=mark) == []
    assert tree(tmp_path) == before


def asyncio_seed(registry: LocalRegistry) -> None:
    """`app:1` in the registry."""
    asyncio.run(seed(registry, "app", [("1", APP)]))


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ('"oci:/tmp/lay\\0out"', "contains a control character ('\\x00')"),
        ('"file:///tmp/b\\0x//app"', "contains a control character ('\\x00')"),
        ('"127.0.0.1:5000/../../x"', "invalid repository path component '..'"),
        ('"127.0.0.1:5000/a\\r\\nb"', "contains a control character ('\\r')"),
    ],
)
def test_hostile_names_in_a_config_file_are_named_with_their_line(
    tmp_path: Path, target: str, says: str
) -> None:
    """A YAML string can carry what a command line cannot (NUL): `config validate` names
    it, with its position, and so would every command reading the file."""
    config = tmp_path / "mirror.yaml"
    config.write_text(
        f"mirrors:\n  - name: a\n    source: 127.0.0.1:5000/app\n    targets: [{target}]\n"
    )
    out = CliRunner().invoke(app, ["config", "validate", str(config)])
    assert out.exit_code == 2, out.output
    assert f"{config}:4:" in out.stderr
    assert says in out.stderr
    assert "Traceback" not in out.stderr


# -- a registry's tag list -------------------------------------------------------------------

#: Names a hostile registry lists among its tags, aimed at files and object keys.
HOSTILE_TAGS = [
    "../../../escape",
    "..",
    "%2e%2e",
    "/abs",
    "..\\..\\escape",
    "a\x00b",
    "a\r\nb",
    "x" * 200,
]


async def test_listed_hostile_tags_never_become_files_or_keys(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """`copy --all-tags` from a registry listing HOSTILE_TAGS into an OCI layout and a
    `file://` bucket: each is skipped and named, `1` is copied, nothing lands outside."""
    await seed(registry, "app", [("1", APP)])

    async def add(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if kind_of(request) != "tags":
            return None
        return web.json_response({"name": "app", "tags": [*HOSTILE_TAGS, "1"]})

    work = tmp_path / "work"
    work.mkdir()
    async with Front(registry, add).running() as front:
        for dst, inside in (
            (f"oci:{work}/targets/layout", work / "targets" / "layout"),
            (f"file://{work}/targets/bucket//app", work / "targets" / "bucket"),
        ):
            out = await asyncio.to_thread(
                run_ocimirror, "copy", "--all-tags", "--json", f"{front.host}/app", dst
            )
            assert out.returncode == 0, out.stderr
            summary = json.loads(out.stdout)
            assert summary["counts"]["copied"] == 1
            assert sorted(s["tag"] for s in summary["skipped"]) == sorted(HOSTILE_TAGS)
            assert outside(work, inside.parent) == set()
            names = [p.name for p in inside.rglob("*")]
            assert not any("escape" in n or "\x00" in n or "\r" in n for n in names)
        assert not any(s.path.endswith(("escape", "..", "abs", "a%00b")) for s in front.seen), [
            s.path for s in front.seen
        ]
    assert not await asyncio.to_thread((tmp_path / "escape").exists)
    assert not await asyncio.to_thread(Path("/escape").exists)


# -- the service's POST body ---------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """`ocimirror serve` (loopback registries allowed), killed at the end."""
    service = Server(tmp_path)
    yield service
    service.kill()


def test_hostile_names_in_an_api_body_fail_their_entry_and_touch_nothing(
    registry: LocalRegistry, server: Server, tmp_path: Path
) -> None:
    """Layouts and directories are never API destinations (or sources), and bad names are
    each entry's own error: nothing is asked of the registry, nothing written."""
    asyncio_seed(registry)
    before = tree(tmp_path)
    mark = registry.mark()
    good = f"{registry.host}/app:1"
    pairs = [
        (good, f"oci:{tmp_path}/stolen:1"),
        (f"oci:{tmp_path}/layout:1", f"{registry.host}/copy:1"),
        (good, f"file://{tmp_path}/bucket//app:1"),
        (good, f"file://{tmp_path}/bucket//../../x:1"),
        (good, "oci:/etc:1"),
        (good, f"{registry.host}/../escape:1"),
        (good, f"{registry.host}/a/%2e%2e/b:1"),
        (good, f"{registry.host}/app:1\r\nX-Evil: 1"),
        (good, f"{registry.host}/app:a\x00b"),
        (good, f"{registry.host}/" + "a" * 300 + ":1"),
        (f"{registry.host}/app@sha256:../../etc", f"{registry.host}/x:1"),
    ]
    answer = server.call("POST", "/", {"mirrors": [{"src": s, "dst": d} for s, d in pairs]})
    assert answer.status == 200, answer.body
    doc = answer.json()
    assert doc["ok"] is False
    assert [e["index"] for e in doc["errors"]] == list(range(len(pairs)))
    errors = [e["error"] for e in doc["errors"]]
    for error in errors[:3] + errors[4:5]:
        assert "only registry references are accepted here" in error, errors
    for error in errors[3:4] + errors[5:7]:
        assert "invalid repository path component" in error, errors
    assert "control character" in errors[7]
    assert "control character ('\\x00')" in errors[8]
    assert "longer than 255 characters" in errors[9]
    assert "invalid digest" in errors[10]
    assert registry.requests(since=mark) == []
    assert {p for p in tree(tmp_path) if not p.startswith("serve")} == {
        p for p in before if not p.startswith("serve")
    }
    assert "Traceback" not in server.text()


# -- the proxy's URL, in front of a cache ------------------------------------------------------


def test_hostile_proxy_paths_never_reach_the_cache_directory(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """Every traversal of test_proxy_hostile against a proxy with a directory cache: each
    refused before the upstream or the cache, nothing in the cache but its own files."""
    asyncio_seed(registry)
    cache = tmp_path / "cache"
    proxy = start_proxy("--registry-host", registry.host, "--cache", str(cache))
    assert (
        proxy.call("GET", "/v2/app/manifests/1", headers={"Accept": APP.manifest.media_type}).status
        == 200
    )
    before = tree(cache)
    mark = registry.mark()
    extra = [
        "/v2/app/blobs/sha256:..%2F..%2F..%2Fescape",
        "/v2/app/blobs/sha256%3A..%2F..%2Fescape",
        "/v2/app/manifests/..%00",
        "/v2/app/manifests/a%0d%0aX-Evil:%201",
        "/v2/%2Fetc%2Fpasswd/manifests/1",
        "/v2/" + "a" * 300 + "/manifests/1",
        "/v2/app/manifests/" + "a" * 129,
    ]
    for path in [*TRAVERSALS, *extra]:
        answer = proxy.call("GET", path)
        assert 400 <= answer.status < 500, (path, answer.status)
    assert registry.requests(since=mark) == []
    assert tree(cache) == before
    assert outside(tmp_path, cache) == set()
    assert "Traceback" not in proxy.text()
    assert os.listdir(cache)  # the cache is there: the check above had something to see
