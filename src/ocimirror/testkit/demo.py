"""The offline demo behind `./scripts/demo`: two local registries, sample images, a mirror run.

It starts a source and a destination registry on loopback, builds sample images on the
spot (tagged releases, a four-platform index with a Windows entry, and two images named
like Docker Hub's), then runs the real `ocimirror` command as a user would and shows what
skopeo sees at the destination, and that a second run writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from .command import run_ocimirror
from .images import make_image, make_index, random_layer
from .registry import LocalRegistry, Skopeo
from .seeding import seed_sync

BOLD, DIM, RESET = ("\x1b[1m", "\x1b[2m", "\x1b[0m") if sys.stdout.isatty() else ("", "", "")


def _say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def _run(*args: str) -> int:
    """Run `ocimirror ARGS` in a child process, echoing the command line first."""
    print(f"{DIM}$ ocimirror {shlex.join(args)}{RESET}", flush=True)
    return run_ocimirror(*args, capture=False).returncode


def _populate(src: LocalRegistry) -> None:
    base = [random_layer(256 * 1024, seed="demo-base")]
    releases = [
        (tag, make_image(layers=2, layer_size=512 * 1024, seed=f"app-{tag}", shared_layers=base))
        for tag in ("1.0.0", "1.1.0", "1.2.0", "2.0.0-rc.1", "latest")
    ]
    seed_sync(src, "demo/app", releases)
    seed_sync(src, "demo/multi", [("latest", make_index(layer_size=256 * 1024, seed="multi"))])
    seed_sync(src, "library/hello-world", [("latest", make_image(layer_size=4096, seed="hello"))])
    seed_sync(src, "area51/jenkins", [("lts", make_image(layers=3, seed="jenkins"))])


def _show(
    skopeo: Skopeo, src: LocalRegistry, dst: LocalRegistry, pairs: list[tuple[str, str]]
) -> None:
    width = max(len(d) for _, d in pairs)
    for s, d in pairs:
        a = skopeo.inspect_json(src.ref(s), registry=src, args=["--raw"])
        raw_src = skopeo.manifest(src.ref(s), registry=src)
        raw_dst = skopeo.manifest(dst.ref(d), registry=dst)
        kind = "index" if "manifests" in a else "image"
        same = "identical bytes" if raw_src == raw_dst else "DIFFERENT"
        print(f"  {d:<{width}}  {kind:<5}  {same}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; `--keep` leaves the registries' directory behind."""
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ocimirror-demo-"))
    src = LocalRegistry(work / "source")
    dst = LocalRegistry(work / "destination")
    skopeo = Skopeo(work / "skopeo")
    codes: list[int] = []
    try:
        src.start()
        dst.start()
        _say(f"two registries on loopback: source {src.host}, destination {dst.host}")
        _populate(src)
        print("  source holds demo/app (5 tags), demo/multi (linux x3 + windows),")
        print("  library/hello-world and area51/jenkins, all built just now")

        _say("copy a whole repository, releases only (semver), keeping digests")
        releases = (
            "copy",
            "--all-tags",
            "--semver",
            ">=1.0",
            f"{src.host}/demo/app",
            f"{dst.host}/mirror/demo/app",
        )
        codes.append(_run(*releases))
        _say("mirror several images under a prefix (docker-mirror's interface)")
        codes.append(
            _run(
                "mirror",
                "-d",
                f"{dst.host}/mirror",
                f"{src.host}/library/hello-world",
                f"{src.host}/area51/jenkins:lts",
                f"{src.host}/demo/multi",
            )
        )
        _say("only some platforms of a multi-arch image: a smaller index, children unchanged")
        codes.append(
            _run(
                "copy",
                "--platform",
                "linux/amd64",
                "--platform",
                "linux/arm64",
                f"{src.host}/demo/multi:latest",
                f"{dst.host}/slim/demo/multi:latest",
            )
        )
        _say("into an OCI layout directory, and back")
        bundle = work / "bundle"
        codes.append(_run("copy", f"{src.host}/demo/app:1.2.0", f"oci:{bundle}"))
        codes.append(_run("copy", f"oci:{bundle}:1.2.0", f"{dst.host}/from-layout/app:1.2.0"))

        _say("what skopeo (the independent judge) reads at the destination")
        _show(
            skopeo,
            src,
            dst,
            [
                ("demo/app:1.0.0", "mirror/demo/app:1.0.0"),
                ("demo/app:1.2.0", "mirror/demo/app:1.2.0"),
                ("library/hello-world:latest", "mirror/library/hello-world:latest"),
                ("area51/jenkins:lts", "mirror/area51/jenkins:lts"),
                ("demo/multi:latest", "mirror/demo/multi:latest"),
                ("demo/app:1.2.0", "from-layout/app:1.2.0"),
            ],
        )
        tags = json.loads(dst.http("GET", "/v2/mirror/demo/app/tags/list").body)["tags"]
        print(f"  mirror/demo/app tags: {', '.join(sorted(tags))} (2.0.0-rc.1 and latest left out)")

        _say("run it again: nothing changed, so nothing is written (HEAD requests only)")
        mark_src, mark_dst = src.mark(), dst.mark()
        codes.append(_run(*releases))
        seen = src.requests(since=mark_src) + dst.requests(since=mark_dst)
        by_method: dict[str, int] = {}
        for r in seen:
            by_method[r.method] = by_method.get(r.method, 0) + 1
        writes = sum(n for m, n in by_method.items() if m in ("PUT", "POST", "PATCH"))
        print(f"  requests seen by both registries: {by_method}; writes: {writes}")

        _say("the real-world form (needs the internet, so not run here)")
        print(
            "  ocimirror mirror -d registry.example.com/mirror hello-world alpine:3.20 area51/jenkins"
        )
        print(
            "  ocimirror copy --all-tags --semver '>=16' postgres registry.example.com/mirror/postgres"
        )
    finally:
        dst.stop()
        src.stop()
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [c for c in codes if c != 0]
    print(f"\n{'demo finished' if not failed else 'demo had failures'} ({len(codes)} commands run)")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    raise SystemExit(main())
