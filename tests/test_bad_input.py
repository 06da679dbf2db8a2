"""Bad input at the source: one clear line naming the image and the cause, nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ocimirror import mediatypes as mt
from ocimirror.testkit.command import run_ocimirror as ocimirror
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed


def write_layout(path: Path, tag: str, raw: bytes, media_type: str) -> str:
    """Write a one-manifest OCI layout by hand (so it can hold what we would never write)."""
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / digest.split(":")[1]).write_bytes(raw)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entry = {
        "mediaType": media_type,
        "digest": digest,
        "size": len(raw),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return digest


def failure_lines(stderr: str) -> list[str]:
    """The lines of the summary that report a failed image (`SRC → DST: cause`)."""
    return [line for line in stderr.splitlines() if "→" in line]


def test_manifest_over_4_mib_is_refused(tmp_path: Path, registry: LocalRegistry) -> None:
    """distribution itself refuses to store such a manifest; a layout can still hold one."""
    image = make_image(layers=1, layer_size=1000, seed="big")
    doc = json.loads(image.manifest.raw)
    doc["annotations"] = {"padding": "x" * (4 * 1024 * 1024 + 10)}
    write_layout(tmp_path / "big", "big", json.dumps(doc).encode(), mt.OCI_MANIFEST)
    out = ocimirror("copy", f"oci:{tmp_path}/big:big", f"{registry.host}/app:big")
    assert out.returncode == 1
    (line,) = failure_lines(out.stderr)
    assert "big:big" in line
    assert "too large" in line
    assert registry.tags("app") == []


@pytest.mark.parametrize(
    ("doc", "media_type", "cause"),
    [
        (
            {"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json", "x": 1},
            "application/vnd.example.thing+json",
            "unknown media type",
        ),
        (
            {"schemaVersion": 1, "name": "app", "tag": "1", "fsLayers": [], "history": []},
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "schema 1",
        ),
        ("not json at all", mt.OCI_MANIFEST, "not valid JSON"),
        # Found by tests/test_fuzz_parsers.py: a descriptor's extras of the wrong type.
        (
            {
                "schemaVersion": 2,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 2},
                "layers": [
                    {"digest": "sha256:" + "b" * 64, "size": 1, "annotations": True, "urls": 5}
                ],
            },
            mt.OCI_MANIFEST,
            "layers[0]: invalid urls 5 (not a list)",
        ),
        ('{"schemaVersion": 2, "manifests": ' + "[" * 3000, mt.OCI_INDEX, "nested too deeply"),
    ],
)
def test_unusable_manifests_are_named(
    tmp_path: Path, registry: LocalRegistry, doc: object, media_type: str, cause: str
) -> None:
    raw = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    write_layout(tmp_path / "odd", "1", raw, media_type)
    out = ocimirror("copy", f"oci:{tmp_path}/odd:1", f"{registry.host}/odd:1")
    assert out.returncode == 1
    (line,) = failure_lines(out.stderr)
    assert "odd:1" in line
    assert cause in line
    assert "Traceback" not in out.stderr
    assert registry.tags("odd") == []


def test_tampered_manifest_digest_mismatch(tmp_path: Path, registry: LocalRegistry) -> None:
    """A manifest whose bytes do not hash to the digest it is stored under is refused."""
    image = make_image(layers=1, layer_size=100, seed="tamper")
    digest = write_layout(tmp_path / "t", "1", image.manifest.raw, mt.OCI_MANIFEST)
    blob = tmp_path / "t" / "blobs" / "sha256" / digest.split(":")[1]
    blob.write_bytes(image.manifest.raw.replace(b"schemaVersion", b"schemaversion"))
    out = ocimirror("copy", f"oci:{tmp_path}/t:1", f"{registry.host}/t:1")
    assert out.returncode == 1
    (line,) = failure_lines(out.stderr)
    assert "digest mismatch" in line
    assert registry.tags("t") == []


async def test_tag_patterns_cannot_freeze_a_copy(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """`(a+)+` against a 41-character tag: a backtracking engine would run for days.

    The child's timeout is only a hang guard; the assertions are on what it copied.
    """
    src, dst = registry_pair
    hostile = "a" * 40 + "b"
    image = make_image(layer_size=200, seed="redos")
    await seed(src, "app", [(hostile, image), ("aaaa", image)])
    out = ocimirror(
        "copy", "--all-tags", "--include", "(a+)+", f"{src.host}/app", f"{dst.host}/app"
    )
    assert out.returncode == 0, out.stderr
    assert dst.tags("app") == ["aaaa"]


@pytest.mark.parametrize(("flag", "pattern"), [("--include", r"(a)\1"), ("--exclude", "v(?=1)")])
def test_a_tag_pattern_re2_cannot_run_is_a_usage_error(
    registry: LocalRegistry, flag: str, pattern: str
) -> None:
    mark = registry.mark()
    out = ocimirror("copy", "--all-tags", flag, pattern, f"{registry.host}/app", "oci:/nowhere")
    assert out.returncode == 2, out.stderr
    kind = flag.removeprefix("--")
    assert f"unsupported {kind} regex {pattern!r}" in out.stderr
    assert "no backreferences or lookaround" in out.stderr
    assert "Traceback" not in out.stderr
    assert registry.requests(since=mark) == []
