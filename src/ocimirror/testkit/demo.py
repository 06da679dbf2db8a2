"""The offline demo behind `./scripts/demo`: two local registries, sample images, every face.

It starts a source and a destination registry on loopback, builds sample images on the
spot (tagged releases, a four-platform index with a Windows entry, and two images named
like Docker Hub's), then runs the real `ocimirror` command as a user would: `copy` and
`mirror` (what skopeo sees at the destination, and that a second run writes nothing), a
`sync` pass from a config and its warm pass, a `POST /` to `serve` with one entry failing
(the Cloud Run answer and the dashboard's JSON), and pulls through `proxy` with its cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from .command import Background, run_ocimirror
from .images import make_image, make_index, random_layer
from .proxy import call
from .registry import LocalRegistry, free_port
from .seeding import seed_sync
from .skopeo import Skopeo

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


def _methods(src: LocalRegistry, dst: LocalRegistry, marks: tuple[int, int]) -> str:
    """What both registries were asked since `marks`, by method, and how many writes."""
    seen = src.requests(since=marks[0]) + dst.requests(since=marks[1])
    by_method = dict(Counter(r.method for r in seen))
    writes = sum(n for m, n in by_method.items() if m in ("PUT", "POST", "PATCH"))
    return f"requests seen by both registries: {by_method}; writes: {writes}"


def _sync(work: Path, src: LocalRegistry, dst: LocalRegistry, codes: list[int]) -> None:
    """`ocimirror sync` from a config, then its warm pass."""
    _say("sync from a config file (the CronJob / docker-sync / Docker Mirror Image face)")
    config = work / "mirror.yaml"
    config.write_text(
        "mirrors:\n"
        "  - name: app\n"
        f"    source: {src.host}/demo/app\n"
        f"    targets: [{dst.host}/sync/demo/app]\n"
        '    tags: {semver: ">=1.0"}\n'
        '    immutable_tags: ["*.*.*"]\n'
        "  - name: tools\n"
        f"    source: [{src.host}/library/hello-world:latest, {src.host}/area51/jenkins:lts]\n"
        f"    targets: [{dst.host}/sync]\n"
    )
    print(f"  {config.name}: mirror app (releases >=1.0, immutable x.y.z) and tools (2 images)")
    codes.append(_run("sync", "-c", str(config)))
    _say("sync again (warm): the state database knows the immutable tags; nothing is written")
    marks = (src.mark(), dst.mark())
    codes.append(_run("sync", "-c", str(config)))
    print(f"  {_methods(src, dst, marks)}")


def _serve(work: Path, src: LocalRegistry, dst: LocalRegistry, codes: list[int]) -> None:
    """`ocimirror serve`: the Cloud Run contract with one entry failing, then the dashboard."""
    port = free_port()
    _say(f"serve: the Cloud Run mirror API on 127.0.0.1:{port}, one entry failing")
    env = {
        **os.environ,
        # Jobs may reach these loopback registries (the SSRF policy refuses private addresses
        # that nobody named; an older ocimirror ignores the variable).
        "OCIMIRROR_ALLOWED_REGISTRIES": f"{src.host},{dst.host}",
    }
    args = ["serve", "--port", str(port), "--state", f"sqlite:///{work / 'serve.state.db'}"]
    print(f"{DIM}$ ocimirror {shlex.join(args)} &{RESET}", flush=True)
    server = Background(args, work / "serve.log", env)
    try:
        server.wait_ready(lambda: call(port, "GET", "/healthz").status == 200, "serve")
        body = {
            "mirrors": [
                {"src": f"{src.host}/demo/app:1.2.0", "dst": f"{dst.host}/served/app:1.2.0"},
                {"src": f"{src.host}/demo/gone:1", "dst": f"{dst.host}/served/gone:1"},
            ]
        }
        text = json.dumps(body)
        print(
            f"{DIM}$ curl -H 'Content-Type: application/json' -d '{text}' http://127.0.0.1:{port}/{RESET}"
        )
        answer = call(
            port,
            "POST",
            "/",
            headers={"Content-Type": "application/json"},
            body=text.encode(),
        )
        reply = answer.json()
        print(f"  HTTP {answer.status} {answer.body.decode().strip()}")
        codes.append(0 if answer.status == 200 and len(reply.get("errors", [])) == 1 else 1)
        jobs = call(port, "GET", "/api/v1/dashboard").json()["jobs"]
        print(f"{DIM}$ curl http://127.0.0.1:{port}/api/v1/dashboard{RESET}")
        for job in jobs[:1]:
            statuses = ", ".join(f"entry {e['index']} {e['status']}" for e in job["entries"])
            print(f"  dashboard: job {job['id'][:8]} {job['state']}: {statuses}")
        codes.append(0 if jobs else 1)
    finally:
        codes.append(0 if server.stop() == 0 else 1)


def _proxy(work: Path, src: LocalRegistry, skopeo: Skopeo, codes: list[int]) -> None:
    """`ocimirror proxy` with a cache: two pulls, the second served from the cache."""
    port = free_port()
    cache = work / "proxy-cache"
    _say(f"proxy: the source registry served as 127.0.0.1:{port}, with a cache")
    args = ["proxy", "--host", "127.0.0.1", "--port", str(port), "--cache", str(cache)]
    env = {**os.environ, "REGISTRY_HOST": src.host}
    print(f"{DIM}$ REGISTRY_HOST={src.host} ocimirror {shlex.join(args)} &{RESET}", flush=True)
    proxy = Background(args, work / "proxy.log", env)
    try:
        proxy.wait_ready(lambda: call(port, "GET", "/healthz").status == 200, "proxy")
        through = f"docker://127.0.0.1:{port}/area51/jenkins:lts"
        for n, label in ((1, "first pull"), (2, "second pull")):
            mark = src.mark()
            print(f"{DIM}$ skopeo copy {through} oci:pulled-{n}{RESET}", flush=True)
            pulled = skopeo.run(
                "copy",
                "--src-tls-verify=false",
                through,
                f"oci:{work / f'pulled-{n}'}",
                check=False,
            )
            blobs = src.count("GET", "blob", since=mark)
            where = "from the upstream" if blobs else "all from the cache"
            print(
                f"  {label}: exit {pulled.returncode}, blob GETs at the source: {blobs} ({where})"
            )
            codes.append(pulled.returncode)
        files = sum(1 for f in cache.rglob("*") if f.is_file())
        print(f"  cache: {files} files in {cache.name}/")
    finally:
        codes.append(0 if proxy.stop() == 0 else 1)


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
        print(f"  {_methods(src, dst, (mark_src, mark_dst))}")

        _sync(work, src, dst, codes)
        _serve(work, src, dst, codes)
        _proxy(work, src, skopeo, codes)

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
