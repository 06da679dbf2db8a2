"""Benchmark `ocimirror proxy --cache DIR` against distribution's pull-through cache (issue 17).

Run it as `.venv/bin/python bench/proxycache.py [--corpus large,small] [--rounds N]
[--clients N] [--client-rounds N] [--tag-ttl DURATION] [--json PATH] [--keep]`. It checks
the target of issue 17: *ocimirror's throughput at least distribution's, and no more
upstream requests than it makes.*

One upstream `LocalRegistry` is seeded with `bench/proxy.py`'s corpora (`large`: 4 layers
of 64 MiB; `small`: 64 layers of 256 KiB). Two caches pull through it, each on loopback:

- **ocimirror**: `ocimirror proxy --registry-host UPSTREAM --cache DIR --tag-ttl TTL`
  (`--tag-ttl`, default 5m, ocimirror's own default);
- **distribution**: Debian's `docker-registry` with `proxy: remoteurl: http://UPSTREAM`
  (`LocalRegistry(proxy_remote=...)`), filesystem storage, info-level logging.

For every round (`--rounds`, default 3), corpus and cache (which cache goes first changes
every round), each with a **fresh, empty cache**:

1. **skopeo**: one `skopeo copy docker://CACHE/REPO:TAG dir:/dev/shm/...` (cold), then
   the same again (warm); skopeo checks every digest, the script every blob's size.
2. **aiohttp**, in the first `--client-rounds` rounds only (default 1, as `bench/proxy.py`
   runs its concurrency phases once: 50 clients of the large image move 12.5 GiB): `--clients`
   (default 50) clients released at once (cold), then again (warm): `bench/proxy.py`'s client
   child, each pinging `/v2/`, getting the manifest by tag and every blob, 3 at a time,
   checking every sha256.

Measured per phase:
- **throughput**: the image's bytes times the clients over the clients' wall time;
- **upstream requests**: the upstream registry's access log from a `mark()` until the
  cache holds every blob of the image (distribution stores blobs in the background after
  its answers; those fetches are the phase's, so the script waits for its storage to show
  every blob's link before counting);
- **cache CPU**: utime + stime of its process (/proc/PID/stat), over the same span;
- **cache peak RSS**: `VmHWM` (/proc/PID/status), reset via /proc/PID/clear_refs before.

The tables show medians over the rounds, ocimirror beside distribution with their ratios;
the target is judged per corpus, client and phase: ocimirror MiB/s / distribution MiB/s
>= 1 and ocimirror's upstream requests <= distribution's. The exit status is 0 even when
the target is missed, since this is a report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.skopeo import Skopeo
from proxy import (
    CORPORA,
    Bar,
    ForeignLoad,
    ImageInfo,
    Meter,
    ProxyProcess,
    Usage,
    concurrent_http,
    in_workdirs,
    seed_corpus,
    skopeo_pull,
    took_line,
    write_json,
)
from run import RequestStats, pick_corpora, tool_versions
from sync import render

MiB = 1024 * 1024
FRONTS = ("ocimirror", "distribution")


class OcimirrorCache(ProxyProcess):
    """`ocimirror proxy --cache DIR` in front of the upstream."""

    def __init__(
        self, upstream: LocalRegistry, directory: Path, env: dict[str, str], tag_ttl: str
    ) -> None:
        """Prepare; nothing runs until `start()`."""
        super().__init__(
            upstream, directory / "cache", directory.with_suffix(".log"), env, tag_ttl=tag_ttl
        )
        self.directory = directory

    def stored(self, info: ImageInfo) -> bool:
        """Whether every blob of the image is in the cache (`blobs/<alg>/<hex>`)."""
        blobs = Path(self.cache) / "blobs"
        return all((blobs / d.replace(":", "/", 1)).exists() for d in info.blobs)


class DistributionCache:
    """distribution's pull-through cache (`docker-registry`, `proxy: remoteurl:`)."""

    def __init__(self, upstream: LocalRegistry, directory: Path) -> None:
        """Prepare; nothing runs until `start()`."""
        self.registry = LocalRegistry(directory, exact_counting=False, proxy_remote=upstream.url)

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        return self.registry.host

    @property
    def pid(self) -> int:
        """The registry's process id."""
        pid = self.registry.pid
        assert pid is not None, "not running"
        return pid

    def metrics(self) -> dict[str, float]:
        """distribution exports no cache counters here."""
        return {}

    def start(self) -> float:
        """Start; return the seconds until it answered."""
        began = time.perf_counter()
        self.registry.start()
        return time.perf_counter() - began

    def stop(self) -> int | None:
        """Stop (SIGTERM); return the exit status."""
        proc = self.registry._proc
        self.registry.stop()
        return proc.returncode if proc else None

    def stored(self, info: ImageInfo) -> bool:
        """Whether every blob is linked into the repository (written when distribution's
        background copy of a blob is committed)."""
        layers = self.registry.storage / "docker/registry/v2/repositories" / info.repo / "_layers"
        return all((layers / d.replace(":", "/", 1) / "link").exists() for d in info.blobs)


Cache = OcimirrorCache | DistributionCache


def wait_stored(cache: Cache, info: ImageInfo, timeout: float = 120.0) -> float:
    """Poll until `cache` holds every blob of the image; return the seconds waited."""
    began = time.perf_counter()
    while not cache.stored(info):
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"{type(cache).__name__} did not store every blob in {timeout} s")
        time.sleep(0.01)
    return time.perf_counter() - began


@dataclass
class Phase:
    """One client kind, cold or warm, through one cache, in one round."""

    front: str
    corpus: str
    client: str
    phase: str
    round: int
    clients: int
    seconds: float
    bytes: int
    errors: list[str]
    usage: Usage
    upstream: dict[str, int]
    settle_seconds: float = 0.0
    upstream_blob_gets: dict[str, int] = field(default_factory=dict)
    #: The aiohttp clients' process's CPU seconds (None for skopeo).
    client_cpu: float | None = None

    @property
    def mib_s(self) -> float:
        """Throughput in MiB/s."""
        return self.bytes / MiB / self.seconds if self.seconds > 0 else 0.0

    @property
    def upstream_total(self) -> int:
        """Every request the upstream answered in the phase."""
        return sum(self.upstream.values())


def skopeo_phases(
    cache: Cache,
    front: str,
    info: ImageInfo,
    round_: int,
    upstream: LocalRegistry,
    skopeo: Skopeo,
    scratch: Path,
    workdir: Path,
    timeout: float,
) -> list[Phase]:
    """A cold then a warm skopeo pull through a fresh `cache`."""
    out = []
    for phase in ("cold", "warm"):
        meter = Meter(cache, upstream)
        log = workdir / f"{front}-{info.corpus}-skopeo-{phase}-{round_}.log"
        seconds, problems = skopeo_pull(skopeo, cache.host, info, scratch, log, timeout)
        settle = wait_stored(cache, info)
        usage, requests = meter.stop()
        blob_gets = Counter(
            r.reference or "" for r in requests if (r.method, r.kind) == ("GET", "blob")
        )
        out.append(
            Phase(
                front, info.corpus, "skopeo", phase, round_, 1, seconds,
                0 if problems else info.total_bytes, problems, usage,
                RequestStats.of(requests).by_kind, settle, dict(blob_gets),
            )
        )  # fmt: skip
    return out


def aiohttp_phases(
    cache: Cache,
    front: str,
    info: ImageInfo,
    round_: int,
    upstream: LocalRegistry,
    clients: int,
    workdir: Path,
    timeout: float,
) -> list[Phase]:
    """`clients` aiohttp clients at once through a fresh `cache`, cold then warm."""
    out = []
    for phase in ("cold", "warm"):
        waited: list[float] = []
        run = concurrent_http(
            phase, info, upstream, cache, clients, workdir, timeout,
            label=f"{front}-{info.corpus}-{phase}-{round_}",
            settle=lambda w=waited: w.append(wait_stored(cache, info)),
        )  # fmt: skip
        out.append(
            Phase(
                front, info.corpus, "aiohttp", phase, round_, clients, run.seconds, run.bytes,
                run.errors, run.usage, run.upstream, sum(waited),
                {d: n for d, n in run.upstream_blob_gets.items() if n}, run.client_cpu,
            )
        )  # fmt: skip
    return out


def print_phase(p: Phase) -> None:
    """One line per phase, as it ends."""
    status = "ok" if not p.errors else f"{len(p.errors)} errors: " + "; ".join(p.errors[:3])
    print(
        f"  round {p.round} {p.corpus:<5} {p.front:<12} {p.client:<7} {p.phase:<4} "
        f"{p.seconds:7.2f} s {p.mib_s:8.1f} MiB/s  upstream {p.upstream_total:4d} "
        f"CPU {p.usage.proxy_cpu:5.2f} s  VmHWM {p.usage.proxy_peak_mib or 0:6.1f} MiB  "
        f"settle {p.settle_seconds:.2f} s"
        + (f"  client CPU {p.client_cpu:.1f} s" if p.client_cpu is not None else "")
        + f"  {status}",
        flush=True,
    )


def median(values: Sequence[float]) -> float:
    """The median, 0 for none."""
    return statistics.median(values) if values else 0.0


def ratio(a: float, b: float) -> str:
    """`a/b` with two decimals, `-` when `b` is 0."""
    return f"{a / b:.2f}" if b else "-"


def side_by_side(phases: Sequence[Phase]) -> tuple[str, list[Bar]]:
    """One row per corpus, client and phase: medians for both caches, ratios, the target."""
    header = [
        "corpus", "client", "phase",
        "MiB/s oci", "MiB/s dist", "oci/dist",
        "upstream req oci", "upstream req dist",
        "CPU s oci", "CPU s dist", "oci/dist",
        "peak RSS MiB oci", "peak RSS MiB dist", "errors", "target",
    ]  # fmt: skip
    rows: list[list[str]] = []
    bars: list[Bar] = []
    keys = dict.fromkeys((p.corpus, p.client, p.phase) for p in phases)
    for corpus, client, phase in keys:
        of = {
            f: [
                p
                for p in phases
                if (p.front, p.corpus, p.client, p.phase) == (f, corpus, client, phase)
            ]
            for f in FRONTS
        }
        mib = {f: median([p.mib_s for p in of[f]]) for f in FRONTS}
        req = {f: median([p.upstream_total for p in of[f]]) for f in FRONTS}
        cpu = {f: median([p.usage.proxy_cpu for p in of[f]]) for f in FRONTS}
        rss = {f: median([p.usage.proxy_peak_mib or 0.0 for p in of[f]]) for f in FRONTS}
        errors = {f: sum(len(p.errors) for p in of[f]) for f in FRONTS}
        ok = (
            not any(errors.values())
            and mib["ocimirror"] >= mib["distribution"]
            and req["ocimirror"] <= req["distribution"]
        )
        bars.append(
            Bar(
                f"{corpus} {client} {phase}: ocimirror MiB/s >= distribution's, upstream "
                "requests <= distribution's, no errors",
                f"{ratio(mib['ocimirror'], mib['distribution'])}x, "
                f"{req['ocimirror']:g} vs {req['distribution']:g} requests, "
                f"{errors['ocimirror']}/{errors['distribution']} errors",
                ok,
            )
        )
        rows.append(
            [
                corpus, client, phase,
                f"{mib['ocimirror']:.1f}", f"{mib['distribution']:.1f}",
                ratio(mib["ocimirror"], mib["distribution"]),
                f"{req['ocimirror']:g}", f"{req['distribution']:g}",
                f"{cpu['ocimirror']:.2f}", f"{cpu['distribution']:.2f}",
                ratio(cpu["ocimirror"], cpu["distribution"]),
                f"{rss['ocimirror']:.1f}", f"{rss['distribution']:.1f}",
                f"{errors['ocimirror']}/{errors['distribution']}",
                "PASS" if ok else "FAIL",
            ]
        )  # fmt: skip
    return render(header, rows, set(range(3, 14))), bars


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--corpus", default=",".join(CORPORA), help="comma-separated corpora (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="fresh caches per phase (default: %(default)s)"
    )
    parser.add_argument(
        "--clients", type=int, default=50, help="concurrent aiohttp clients (default: %(default)s)"
    )
    parser.add_argument(
        "--client-rounds",
        type=int,
        default=1,
        help="rounds that also run the aiohttp clients, as bench/proxy.py runs its concurrency"
        " phases once (default: %(default)s)",
    )
    parser.add_argument(
        "--tag-ttl",
        default="5m",
        help="ocimirror's --tag-ttl (default: %(default)s, its own default; distribution asks"
        " upstream for a tag on every pull)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per phase (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    args.corpora = pick_corpora(parser, args.corpus, CORPORA)
    if args.rounds < 1 or args.clients < 1 or not 0 <= args.client_rounds <= args.rounds:
        parser.error("--rounds and --clients must be at least 1, --client-rounds 0 to --rounds")
    return args


def collect(workdir: Path, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Seed the upstream, run every round; return what was measured."""
    skopeo = Skopeo(workdir / "skopeo")
    machine = {"cpus": str(len(os.sched_getaffinity(0))), **tool_versions(skopeo)}
    print(f"work dir {workdir}; {machine}", flush=True)
    upstream = LocalRegistry(workdir / "upstream", exact_counting=False)
    phases: list[Phase] = []
    images: list[ImageInfo] = []
    live: list[Cache] = []
    watch = ForeignLoad()
    began = time.perf_counter()
    watch.start()

    def fresh(front: str, label: str) -> Cache:
        directory = workdir / label
        cache: Cache = (
            OcimirrorCache(upstream, directory, skopeo.env(), args.tag_ttl)
            if front == "ocimirror"
            else DistributionCache(upstream, directory)
        )
        live.append(cache)
        cache.start()
        return cache

    try:
        upstream.start()
        for corpus in args.corpora:
            info = seed_corpus(upstream, corpus)
            images.append(info)
            print(
                f"seeded {corpus.name}: {len(info.blobs)} blobs, {info.total_bytes / MiB:.1f} MiB"
            )
        for round_ in range(1, args.rounds + 1):
            order = FRONTS if round_ % 2 else FRONTS[::-1]
            for info in images:
                for front in order:
                    label = f"{front}-{info.corpus}-{round_}"
                    clients = ("skopeo", "aiohttp") if round_ <= args.client_rounds else ("skopeo",)
                    for client in clients:
                        cache = fresh(front, f"{label}-{client}")
                        try:
                            if client == "skopeo":
                                got = skopeo_phases(
                                    cache, front, info, round_, upstream, skopeo, scratch,
                                    workdir, args.timeout,
                                )  # fmt: skip
                            else:
                                got = aiohttp_phases(
                                    cache, front, info, round_, upstream, args.clients,
                                    workdir, args.timeout,
                                )  # fmt: skip
                        finally:
                            cache.stop()
                            shutil.rmtree(workdir / f"{label}-{client}", ignore_errors=True)
                        for p in got:
                            print_phase(p)
                        phases += got
    finally:
        foreign = watch.stop()
        for cache in live:
            cache.stop()
        upstream.stop()
    return {
        "machine": machine,
        "images": [asdict(i) for i in images],
        "phases": phases,
        "foreign": foreign,
        "seconds": time.perf_counter() - began,
    }


def report(collected: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the side-by-side table and the verdicts; write `--json`."""
    phases: list[Phase] = collected["phases"]
    print()
    print(
        f"ocimirror proxy --cache (--tag-ttl {args.tag_ttl}) against distribution's pull-through"
        f" cache; medians of {args.rounds} rounds (skopeo) and {args.client_rounds} (aiohttp:"
        f" {args.clients} clients at once), each on a fresh cache; CPU and peak RSS of the"
        " cache process"
    )
    table, bars = side_by_side(phases)
    print(table)
    print()
    print("upstream requests by kind (median round's, per corpus, client, phase, cache):")
    for key in dict.fromkeys((p.corpus, p.client, p.phase, p.front) for p in phases):
        of = sorted(
            (p for p in phases if (p.corpus, p.client, p.phase, p.front) == key),
            key=lambda p: p.upstream_total,
        )
        mid = of[len(of) // 2]
        each = " ".join(str(p.upstream_total) for p in of)
        print(f"  {' '.join(key)}: {mid.upstream or '-'} (totals {each})")
    print()
    print(took_line(collected["seconds"], collected["foreign"]))
    print()
    failed = [b for b in bars if not b.passed]
    for b in failed:
        print(f"FAIL {b.name}: {b.value}")
    print(
        f"SUMMARY: {len(bars) - len(failed)}/{len(bars)} targets met"
        + (f", {len(failed)} missed" if failed else "")
    )
    if args.json:
        raw = {
            **{k: v for k, v in collected.items() if k != "phases"},
            "phases": [{**asdict(p), "mib_s": p.mib_s} for p in phases],
        }
        write_json(args.json, raw)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; return 0 whatever the verdicts."""
    args = parse_args(argv)
    collected = in_workdirs(
        "ocimirror-bench-proxycache-", args.keep, lambda work, scratch: collect(work, scratch, args)
    )
    report(collected, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
