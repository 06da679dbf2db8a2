"""Benchmark `ocimirror proxy --cache` against pulling from the registry directly (issue 3).

Run it as `.venv/bin/python bench/proxy.py [--corpus large,small] [--rounds N]
[--clients N] [--cache-store dir|s3] [--cache-redirect] [--json PATH] [--keep]`. It checks the bars of issue 3: *pull throughput
through the proxy (cache hit) at least 80% of pulling from the registry directly; 50
concurrent clients served without errors.*

An upstream registry (`LocalRegistry`) is seeded with one image per corpus: `large`, 4
layers of 64 MiB (256 MiB), and `small`, 64 layers of 256 KiB (16 MiB). `ocimirror proxy
--cache DIR` runs in front of it (anonymous pass-through, `--tag-ttl 1h` so that a
measured pull never waits for a revalidation); one skopeo pull through the proxy warms
its cache. Then, for each corpus:

1. **Throughput.** The whole image (manifest and every blob) is pulled directly from the
   registry and through the proxy, alternating (which goes first changes every round),
   `--rounds` times each (default 5), with two clients:
   - `skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG dir:/dev/shm/...`, a real,
     independent client that verifies every digest (timed by `run.run_measured`);
   - `curl --parallel` (`--raw-parallel` transfers at a time, default 6, like skopeo)
     writing to /dev/null: the manifest, then every blob; a client with next to no
     overhead of its own, so that the servers' speed shows.
   Throughput is the image's bytes over the wall time; the ratio is the proxy's median
   MiB/s over the registry's. The bar is judged on skopeo (the realistic client); the raw
   client's ratio is shown for information. The CPU time the proxy and the registry spent
   on each pull (from /proc/PID/stat) is reported beside it.
2. **Concurrency, cache hit.** `--clients` (default 50) HTTP clients, each with its own
   aiohttp session, in one child process (`bench/proxy.py _client`), released at once:
   each pings `/v2/`, gets the manifest by tag and then every blob, 3 at a time (Docker's
   default), hashing each with sha256. Every answer must be a 200 with the right digest.
   Reported: errors, total time, aggregate MiB/s, the proxy's peak RSS during the phase
   (`VmHWM` from /proc/PID/status, reset through /proc/PID/clear_refs before it), its CPU
   time, the client's. For `small`, also `--clients` concurrent `skopeo copy` runs.
3. **Concurrency, cold.** A new proxy with an empty cache, the same clients at once; the
   upstream registry's access log (counted from a `mark()`) must show exactly one blob
   GET per blob.

With `--cache-store s3` the proxies cache in S3 instead of a directory: moto's server on
loopback (`testkit.LocalS3`, a bucket per proxy), a Python stand-in, so what is measured is
the stand-in as much as the proxy; `--cache-redirect` then has cached blobs fetched from it
by presigned URL.

Results are printed as tables with the bars and PASS/FAIL; the exit status is 0 even when
a bar fails, since this is a report. The registries, proxies and work dirs are removed on
exit (also on Ctrl-C and SIGTERM) unless `--keep`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from ocimirror import mediatypes as mt
from ocimirror.testkit.accesslog import Request
from ocimirror.testkit.images import SampleImage, derive_seed, make_image
from ocimirror.testkit.proxy import PROXY_ENV
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.seeding import seed_sync
from ocimirror.testkit.skopeo import Skopeo
from run import (
    OCIMIRROR,
    ChildServer,
    RequestStats,
    pick_corpora,
    run_measured,
    tool_versions,
)
from sync import _kill_running_tools, memory_mib, render

MiB = 1024 * 1024
#: The bar: the proxy's median throughput (cache hit) over the registry's, with skopeo.
THROUGHPUT_BAR = 0.8
#: How many clients pull at once in the concurrency phases (the bar says 50).
CLIENTS = 50
#: Blobs a concurrency client fetches at a time (Docker's max-concurrent-downloads).
CLIENT_PARALLEL = 3
#: What a client that takes every manifest type sends.
ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Corpus:
    """One image, the repository and tag it is pushed to."""

    name: str
    repo: str
    tag: str
    make: Callable[[], SampleImage]
    description: str


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "large",
            "bench/large",
            "1",
            lambda: make_image(
                layers=4, layer_size=64 * MiB, seed=derive_seed("bench-proxy", "large")
            ),
            "1 image, 4 layers of 64 MiB",
        ),
        Corpus(
            "small",
            "bench/small",
            "1",
            lambda: make_image(
                layers=64, layer_size=256 * 1024, seed=derive_seed("bench-proxy", "small")
            ),
            "1 image, 64 layers of 256 KiB",
        ),
    )
}


@dataclass
class ImageInfo:
    """What was pushed for a corpus: the manifest and every blob (digest, size)."""

    corpus: str
    repo: str
    tag: str
    manifest_digest: str
    manifest_size: int
    blobs: dict[str, int]

    @property
    def total_bytes(self) -> int:
        """Bytes of a whole pull: the manifest and every blob."""
        return self.manifest_size + sum(self.blobs.values())


# -- processes -----------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds of process `pid` so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After "(comm)": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reset_peak(pid: int) -> bool:
    """Reset the peak RSS (`VmHWM`) of `pid` to its current RSS; False if not possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Front(Protocol):
    """What the phases need of a server pulled through: its address, its process (for CPU
    and peak RSS) and its cache counters (empty when it has none)."""

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        ...

    @property
    def pid(self) -> int:
        """The server's process id."""
        ...

    def metrics(self) -> dict[str, float]:
        """Cache counters as `name{kind}` -> value."""
        ...


class ProxyProcess(ChildServer):
    """`ocimirror proxy --cache DIR|URL` in front of `upstream`, on a loopback port."""

    what = "proxy"

    def __init__(
        self,
        upstream: LocalRegistry,
        cache: Path | str,
        log: Path,
        env: dict[str, str],
        extra: Sequence[str] = (),
        tag_ttl: str = "1h",
    ) -> None:
        """Prepare the command (`cache`: a directory or a store URL); nothing runs until
        `start()`. `tag_ttl` 1h by default: a measured pull never waits for a revalidation."""
        port = free_port()
        command = [
            str(OCIMIRROR), "proxy", "--registry-host", upstream.host, "--host", "127.0.0.1",
            "--port", str(port), "--cache", str(cache), "--tag-ttl", tag_ttl, *extra,
        ]  # fmt: skip
        super().__init__(command, {k: v for k, v in env.items() if k not in PROXY_ENV}, log, port)
        self.cache = cache

    def metrics(self) -> dict[str, float]:
        """The proxy's cache counters from `/metrics`, as `name{kind}` -> value."""
        wanted = re.compile(
            r'^ocimirror_proxy_cache_(hits|misses|coalesced|stale)_total\{kind="(\w+)"\} (\S+)$'
        )
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://{self.host}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                m = wanted.match(line)
                if m:
                    out[f"{m[1]} {m[2]}"] = float(m[3])
        return out


@dataclass
class Usage:
    """CPU seconds the proxy and the registry spent, and the proxy's peak RSS, in a phase."""

    proxy_cpu: float = 0.0
    registry_cpu: float = 0.0
    proxy_peak_mib: float | None = None


class Meter:
    """Measures a phase: CPU of the proxy and registry, the proxy's peak RSS, requests."""

    def __init__(self, proxy: Front | None, registry: LocalRegistry) -> None:
        """Take the starting point (and reset the proxy's peak RSS)."""
        self.proxy, self.registry = proxy, registry
        self.mark = registry.mark()
        self.peak_reset = proxy is not None and reset_peak(proxy.pid)
        self.proxy_cpu = cpu_seconds(proxy.pid if proxy else None)
        self.registry_cpu = cpu_seconds(registry.pid)

    def stop(self) -> tuple[Usage, list[Request]]:
        """The usage since the start, and the requests the registry answered meanwhile."""
        usage = Usage(
            proxy_cpu=cpu_seconds(self.proxy.pid if self.proxy else None) - self.proxy_cpu,
            registry_cpu=cpu_seconds(self.registry.pid) - self.registry_cpu,
        )
        if self.proxy is not None:
            usage.proxy_peak_mib = memory_mib(self.proxy.pid).get("VmHWM")
        return usage, self.registry.requests(since=self.mark)


class ForeignLoad:
    """Watches, every `interval` seconds, for busy processes that are not this benchmark's.

    The registry, the proxies and the clients share the machine's cores; another test
    suite running beside them moves every number. A process outside this process's tree
    that used more than `threshold` of a core between two samples is noted.
    """

    def __init__(self, interval: float = 2.0, threshold: float = 0.2) -> None:
        """Prepare; nothing runs until `start()`."""
        self.interval = interval
        self.threshold = threshold
        #: Command name -> the largest share of a core it was seen using.
        self.seen: dict[str, float] = {}
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)

    @staticmethod
    def _snapshot() -> dict[int, tuple[str, int, float]]:
        """Every process: pid -> (command name, parent pid, CPU seconds)."""
        out: dict[int, tuple[str, int, float]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = stat.read_text()
                comm = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rpartition(")")[2].split()
                cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                out[int(stat.parent.name)] = (comm, int(fields[1]), cpu)
        return out

    def _run(self) -> None:
        me = os.getpid()
        before = self._snapshot()
        while not self._stop.wait(self.interval):
            now = self._snapshot()
            self.loads.append(os.getloadavg()[0])
            ours = {me}
            grew = True
            while grew:  # this process's descendants
                found = {pid for pid, (_, ppid, _) in now.items() if ppid in ours} - ours
                ours |= found
                grew = bool(found)
            for pid, (comm, _, cpu) in now.items():
                if pid in ours or pid not in before:
                    continue
                share = (cpu - before[pid][2]) / self.interval
                if share > self.threshold:
                    self.seen[comm] = max(self.seen.get(comm, 0.0), share)
            before = now

    def start(self) -> None:
        """Start watching in a daemon thread."""
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop watching; return what was seen and the range of the 1-minute load."""
        self._stop.set()
        self._thread.join()
        return {
            "busy_foreign_processes": {k: round(v, 2) for k, v in sorted(self.seen.items())},
            "load_1min_min": round(min(self.loads), 2) if self.loads else None,
            "load_1min_max": round(max(self.loads), 2) if self.loads else None,
        }


# -- corpus --------------------------------------------------------------------------------


def seed_corpus(registry: LocalRegistry, corpus: Corpus) -> ImageInfo:
    """Push the corpus's image into `registry`; return what it holds (not the bytes)."""
    image = corpus.make()
    seed_sync(registry, corpus.repo, [(corpus.tag, image)])
    return ImageInfo(
        corpus=corpus.name,
        repo=corpus.repo,
        tag=corpus.tag,
        manifest_digest=image.digest,
        manifest_size=image.manifest.size,
        blobs={b.digest: b.size for b in image.all_blobs()},
    )


# -- throughput ------------------------------------------------------------------------------


@dataclass
class PullRun:
    """One whole pull of an image by one client from one server."""

    corpus: str
    client: str
    target: str
    round: int
    seconds: float
    bytes: int
    ok: bool
    problems: list[str]
    usage: Usage
    upstream: dict[str, int]

    @property
    def mib_s(self) -> float:
        """Throughput in MiB/s."""
        return self.bytes / MiB / self.seconds if self.seconds > 0 else 0.0


def check_dir(dest: Path, info: ImageInfo) -> list[str]:
    """What a `skopeo copy ... dir:DEST` lacks: every blob file of the right size."""
    problems = []
    for digest, size in info.blobs.items():
        path = dest / digest.split(":", 1)[1]
        if not path.exists():
            problems.append(f"blob {digest[:19]} missing")
        elif path.stat().st_size != size:
            problems.append(f"blob {digest[:19]}: {path.stat().st_size} bytes, not {size}")
    if not (dest / "manifest.json").exists():
        problems.append("manifest.json missing")
    return problems


def skopeo_pull(
    skopeo: Skopeo, host: str, info: ImageInfo, scratch: Path, log: Path, timeout: float
) -> tuple[float, list[str]]:
    """`skopeo copy` the image from `host` into a dir: under `scratch`; (seconds, problems)."""
    dest = scratch / f"pull-{time.monotonic_ns()}"
    cmd = skopeo.command(
        "copy",
        "--src-tls-verify=false",
        f"docker://{host}/{info.repo}:{info.tag}",
        f"dir:{dest}",
    )
    try:
        code, seconds, _ = run_measured(cmd, skopeo.env(), log, timeout)
        problems = [] if code == 0 else [f"skopeo exit {code}: {log.read_text()[-500:]}"]
        if code == 0:
            problems += check_dir(dest, info)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return seconds, problems


def curl_pull(host: str, info: ImageInfo, parallel: int, timeout: float) -> tuple[float, list[str]]:
    """Pull the image with curl: the manifest (checked), then every blob in parallel to
    /dev/null (each must be a 200 of the right size); return (seconds, problems)."""
    base = f"http://{host}/v2/{info.repo}"
    start = time.perf_counter()
    manifest = subprocess.run(
        ["curl", "-sS", "-f", "-H", f"Accept: {ACCEPT}", f"{base}/manifests/{info.tag}"],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    problems: list[str] = []
    if manifest.returncode != 0:
        return time.perf_counter() - start, [f"manifest: curl {manifest.stderr.decode()[:300]}"]
    doc = json.loads(manifest.stdout)
    digests = [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]
    cmd = [
        "curl",
        "-sS",
        "-L",  # a proxy with --cache-redirect sends blobs' GETs to the bucket
        "--parallel",
        "--parallel-max",
        str(min(parallel, len(digests))),
        "-w",
        "%{http_code} %{size_download} %{url}\\n",
    ]
    for digest in digests:
        cmd += ["-o", "/dev/null", f"{base}/blobs/{digest}"]
    blobs = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    if "sha256:" + hashlib.sha256(manifest.stdout).hexdigest() != info.manifest_digest:
        problems.append("manifest digest differs")
    got: dict[str, tuple[int, int]] = {}
    for line in blobs.stdout.splitlines():
        code, length, url = line.split(" ", 2)
        got[url.rsplit("/", 1)[1]] = (int(code), int(length))
    for digest in digests:
        status, size = got.get(digest, (0, 0))
        if status != 200 or size != info.blobs.get(digest):
            problems.append(f"blob {digest[:19]}: HTTP {status}, {size} bytes")
    if blobs.returncode != 0:
        problems.append(f"curl exit {blobs.returncode}: {blobs.stderr[:300]}")
    return seconds, problems


def bench_throughput(
    info: ImageInfo,
    registry: LocalRegistry,
    proxy: ProxyProcess,
    skopeo: Skopeo,
    scratch: Path,
    workdir: Path,
    args: argparse.Namespace,
) -> list[PullRun]:
    """Pull the image directly and through the proxy, alternating, with skopeo and curl."""
    runs: list[PullRun] = []
    hosts = {"direct": registry.host, "proxy": proxy.host}
    for round_ in range(1, args.rounds + 1):
        order = ("direct", "proxy") if round_ % 2 else ("proxy", "direct")
        for client in ("skopeo", "curl"):
            for target in order:
                meter = Meter(proxy, registry)
                if client == "skopeo":
                    log = workdir / f"{info.corpus}-{client}-{target}-{round_}.log"
                    seconds, problems = skopeo_pull(
                        skopeo, hosts[target], info, scratch, log, args.timeout
                    )
                else:
                    seconds, problems = curl_pull(
                        hosts[target], info, args.raw_parallel, args.timeout
                    )
                usage, requests = meter.stop()
                if target == "direct":
                    usage.proxy_peak_mib = None
                by_kind = RequestStats.of(requests).by_kind
                if target == "proxy":
                    fetched = sum(
                        n for k, n in by_kind.items() if k in ("GET blob", "GET manifest")
                    )
                    if fetched:
                        problems.append(f"{fetched} manifest/blob GETs upstream on a cache hit")
                run = PullRun(
                    info.corpus,
                    client,
                    target,
                    round_,
                    seconds,
                    info.total_bytes,
                    not problems,
                    problems,
                    usage,
                    by_kind,
                )
                runs.append(run)
                print(
                    f"  {info.corpus:<5} round {round_} {client:<6} {target:<6} "
                    f"{seconds:6.2f} s {run.mib_s:8.1f} MiB/s  CPU proxy {usage.proxy_cpu:5.2f} s "
                    f"registry {usage.registry_cpu:5.2f} s  "
                    + ("ok" if run.ok else "FAILED: " + "; ".join(problems[:3])),
                    flush=True,
                )
    return runs


# -- concurrency: the client child -------------------------------------------------------------


async def _one_client(
    base: str,
    spec: dict[str, Any],
    go: asyncio.Event,
    statuses: Counter[str],
) -> dict[str, Any]:
    """One client: ping, the manifest by tag, then every blob (hashed), `parallel` at once."""
    errors: list[str] = []
    received = 0
    verified = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    connector = aiohttp.TCPConnector(limit=spec["parallel"] + 1)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        await go.wait()
        start = time.perf_counter()
        try:
            async with session.get(f"{base}/v2/") as r:
                statuses[f"ping {r.status}"] += 1
                await r.read()
            url = f"{base}/v2/{spec['repo']}/manifests/{spec['tag']}"
            async with session.get(url, headers={"Accept": ACCEPT}) as r:
                statuses[f"manifest {r.status}"] += 1
                raw = await r.read()
                received += len(raw)
            if r.status != 200:
                raise RuntimeError(f"manifest: HTTP {r.status}")
            if "sha256:" + hashlib.sha256(raw).hexdigest() != spec["manifest_digest"]:
                raise RuntimeError("manifest digest differs")
            doc = json.loads(raw)
            descs = [doc["config"], *doc["layers"]]
            sem = asyncio.Semaphore(spec["parallel"])

            async def blob(desc: dict[str, Any]) -> None:
                nonlocal received, verified
                async with sem:
                    digest = desc["digest"]
                    h = hashlib.sha256()
                    size = 0
                    try:
                        async with session.get(f"{base}/v2/{spec['repo']}/blobs/{digest}") as r:
                            statuses[f"blob {r.status}"] += 1
                            if r.status != 200:
                                errors.append(f"blob {digest[:19]}: HTTP {r.status}")
                                return
                            async for chunk in r.content.iter_any():
                                h.update(chunk)
                                size += len(chunk)
                    except (aiohttp.ClientError, TimeoutError) as e:
                        errors.append(f"blob {digest[:19]}: {type(e).__name__}: {e}")
                        return
                    finally:
                        received += size
                    if "sha256:" + h.hexdigest() != digest or size != desc["size"]:
                        errors.append(f"blob {digest[:19]}: wrong content ({size} bytes)")
                    else:
                        verified += 1

            await asyncio.gather(*(blob(d) for d in descs))
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError) as e:
            errors.append(f"{type(e).__name__}: {e}")
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": received, "verified": verified, "errors": errors}


async def _clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Start `spec["clients"]` clients, release them at once, gather what they saw."""
    go = asyncio.Event()
    statuses: Counter[str] = Counter()
    base = f"http://{spec['host']}"
    tasks = [
        asyncio.create_task(_one_client(base, spec, go, statuses)) for _ in range(spec["clients"])
    ]
    await asyncio.sleep(0.2)  # every session made, waiting for the start
    start = time.perf_counter()
    go.set()
    results = await asyncio.gather(*tasks)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "clients": results,
        "statuses": dict(sorted(statuses.items())),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def client_main(spec_path: str, out_path: str) -> int:
    """The child process of the concurrency phases: read the spec, write the results."""
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_clients(spec))
    Path(out_path).write_text(json.dumps(result))
    return 0


# -- concurrency: the phases -----------------------------------------------------------------


@dataclass
class ConcurrencyRun:
    """N clients pulling the image through a proxy at once."""

    corpus: str
    phase: str
    client: str
    clients: int
    seconds: float
    bytes: int
    failed_clients: int
    errors: list[str]
    blobs_verified: int
    blobs_expected: int
    statuses: dict[str, int]
    client_cpu: float | None
    client_seconds: list[float]
    usage: Usage
    upstream: dict[str, int]
    #: Cold only: GETs of each blob at the upstream registry (digest -> count).
    upstream_blob_gets: dict[str, int] = field(default_factory=dict)
    proxy_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def mib_s(self) -> float:
        """Aggregate throughput in MiB/s."""
        return self.bytes / MiB / self.seconds if self.seconds > 0 else 0.0


def run_clients(
    proxy: Front, info: ImageInfo, clients: int, workdir: Path, name: str, timeout: float
) -> dict[str, Any]:
    """Run the client child against `proxy`; return its results (or raise)."""
    spec = workdir / f"{name}-spec.json"
    out = workdir / f"{name}-out.json"
    log = workdir / f"{name}-client.log"
    spec.write_text(
        json.dumps(
            {
                "host": proxy.host,
                "repo": info.repo,
                "tag": info.tag,
                "manifest_digest": info.manifest_digest,
                "clients": clients,
                "parallel": CLIENT_PARALLEL,
            }
        )
    )
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, __file__, "_client", str(spec), str(out)],
            stdout=f,
            stderr=f,
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"clients not done after {timeout:g} s") from None
    if code != 0 or not out.exists():
        raise RuntimeError(f"client process exit {code}: {log.read_text()[-1500:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def concurrent_http(
    phase: str,
    info: ImageInfo,
    registry: LocalRegistry,
    proxy: Front,
    clients: int,
    workdir: Path,
    timeout: float,
    *,
    label: str = "",
    settle: Callable[[], None] | None = None,
) -> ConcurrencyRun:
    """`clients` aiohttp clients pull the image through `proxy` at once. `label` names the
    phase's files in `workdir`; `settle`, if given, is called after the clients and before
    the upstream requests, CPU and peak RSS are read (to wait for work the server does
    after its answers)."""
    before = proxy.metrics()
    meter = Meter(proxy, registry)
    errors: list[str] = []
    try:
        name = label or f"{info.corpus}-{phase}"
        result = run_clients(proxy, info, clients, workdir, name, timeout)
    except RuntimeError as e:
        result = {"seconds": timeout, "clients": [], "statuses": {}, "cpu_seconds": None}
        errors.append(str(e))
    if settle is not None:
        settle()
    usage, requests = meter.stop()
    after = proxy.metrics()
    per_client = result["clients"]
    for i, c in enumerate(per_client):
        errors += [f"client {i}: {e}" for e in c["errors"]]
    blob_gets = Counter(
        r.reference or "" for r in requests if r.method == "GET" and r.kind == "blob"
    )
    return ConcurrencyRun(
        corpus=info.corpus,
        phase=phase,
        client="aiohttp",
        clients=clients,
        seconds=result["seconds"],
        bytes=sum(c["bytes"] for c in per_client),
        failed_clients=sum(1 for c in per_client if c["errors"]) + (clients - len(per_client)),
        errors=errors,
        blobs_verified=sum(c["verified"] for c in per_client),
        blobs_expected=clients * len(info.blobs),
        statuses=result["statuses"],
        client_cpu=result["cpu_seconds"],
        client_seconds=sorted(c["seconds"] for c in per_client),
        usage=usage,
        upstream=RequestStats.of(requests).by_kind,
        upstream_blob_gets={d: blob_gets.get(d, 0) for d in info.blobs},
        proxy_metrics={k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
    )


def concurrent_skopeo(
    info: ImageInfo,
    registry: LocalRegistry,
    proxy: ProxyProcess,
    skopeo: Skopeo,
    clients: int,
    scratch: Path,
    workdir: Path,
    timeout: float,
) -> ConcurrencyRun:
    """`clients` skopeo copies of the image through `proxy` at once."""
    meter = Meter(proxy, registry)
    dests = [scratch / f"many-{i}" for i in range(clients)]
    logs = [workdir / f"{info.corpus}-skopeo-many-{i}.log" for i in range(clients)]
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    for dest, log in zip(dests, logs, strict=True):
        cmd = skopeo.command(
            "copy",
            "--src-tls-verify=false",
            f"docker://{proxy.host}/{info.repo}:{info.tag}",
            f"dir:{dest}",
        )
        with log.open("wb") as f:
            procs.append(
                subprocess.Popen(cmd, stdout=f, stderr=f, env=skopeo.env(), start_new_session=True)
            )
    ended: list[float] = []
    codes: list[int] = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(1.0, timeout - (time.perf_counter() - start))))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            codes.append(proc.wait())
        ended.append(time.perf_counter() - start)
    seconds = time.perf_counter() - start
    usage, requests = meter.stop()
    errors: list[str] = []
    failed = 0
    for i, (code, dest, log) in enumerate(zip(codes, dests, logs, strict=True)):
        problems = [f"exit {code}: {log.read_text()[-300:]}"] if code != 0 else []
        problems += check_dir(dest, info) if code == 0 else []
        failed += bool(problems)
        errors += [f"skopeo {i}: {p}" for p in problems]
        shutil.rmtree(dest, ignore_errors=True)
    return ConcurrencyRun(
        corpus=info.corpus,
        phase="hit",
        client="skopeo",
        clients=clients,
        seconds=seconds,
        bytes=(clients - failed) * info.total_bytes,
        failed_clients=failed,
        errors=errors,
        blobs_verified=(clients - failed) * len(info.blobs),
        blobs_expected=clients * len(info.blobs),
        statuses={f"exit {c}": n for c, n in sorted(Counter(codes).items())},
        client_cpu=None,
        client_seconds=sorted(ended),
        usage=usage,
        upstream=RequestStats.of(requests).by_kind,
    )


def print_concurrency(run: ConcurrencyRun) -> None:
    """One line per concurrency phase, as it ends."""
    status = "ok" if not run.errors else f"{len(run.errors)} errors: " + "; ".join(run.errors[:3])
    print(
        f"  {run.corpus:<5} {run.phase:<4} {run.clients} x {run.client:<7} {run.seconds:7.2f} s "
        f"{run.mib_s:8.1f} MiB/s  blobs verified {run.blobs_verified}/{run.blobs_expected}  "
        f"proxy VmHWM {run.usage.proxy_peak_mib or 0:6.1f} MiB, CPU {run.usage.proxy_cpu:.2f} s  "
        f"upstream {run.upstream}  {status}",
        flush=True,
    )


# -- judging and output --------------------------------------------------------------------------


@dataclass
class Bar:
    """One bar (or check) and whether it is met; `judged` False: shown for information."""

    name: str
    value: str
    passed: bool
    judged: bool = True

    @property
    def result(self) -> str:
        """PASS, FAIL, or `info` for what is not judged."""
        if not self.judged:
            return "info"
        return "PASS" if self.passed else "FAIL"


def median_mib_s(runs: Sequence[PullRun]) -> float:
    """The median throughput of some runs."""
    return statistics.median(r.mib_s for r in runs) if runs else 0.0


def throughput_table(runs: Sequence[PullRun]) -> tuple[str, list[Bar]]:
    """One row per corpus, client and target; the bars on skopeo, curl for information."""
    header = [
        "corpus",
        "client",
        "target",
        "MiB/s (runs)",
        "median MiB/s",
        "median s",
        "CPU proxy s",
        "CPU registry s",
        "proxy/direct",
        "bar",
        "result",
    ]
    rows: list[list[str]] = []
    bars: list[Bar] = []
    for corpus in dict.fromkeys(r.corpus for r in runs):
        for client in ("skopeo", "curl"):
            of = {
                t: [r for r in runs if r.corpus == corpus and r.client == client and r.target == t]
                for t in ("direct", "proxy")
            }
            direct, proxied = median_mib_s(of["direct"]), median_mib_s(of["proxy"])
            ratio = proxied / direct if direct > 0 else 0.0
            ok = all(r.ok for r in of["direct"] + of["proxy"])
            judged = client == "skopeo"
            bar = Bar(
                f"{corpus}: pull throughput (cache hit), {client}: proxy/direct "
                f">= {THROUGHPUT_BAR:.2f}" + ("" if judged else " (raw client, for information)"),
                f"{ratio:.2f}" + ("" if ok else " (some runs wrong)"),
                ok and ratio >= THROUGHPUT_BAR,
                judged,
            )
            bars.append(bar)
            for target in ("direct", "proxy"):
                rs = of[target]
                rows.append(
                    [
                        corpus,
                        client,
                        target,
                        " ".join(f"{r.mib_s:.0f}" for r in rs),
                        f"{median_mib_s(rs):.1f}",
                        f"{statistics.median(r.seconds for r in rs):.2f}" if rs else "",
                        f"{statistics.median(r.usage.proxy_cpu for r in rs):.2f}" if rs else "",
                        f"{statistics.median(r.usage.registry_cpu for r in rs):.2f}" if rs else "",
                        f"{ratio:.2f}" if target == "proxy" else "",
                        f">= {THROUGHPUT_BAR:.2f}" if target == "proxy" else "",
                        bar.result if target == "proxy" else "",
                    ]
                )
    return render(header, rows, {3, 4, 5, 6, 7, 8}), bars


def concurrency_table(runs: Sequence[ConcurrencyRun]) -> tuple[str, list[Bar]]:
    """One row per concurrency phase, its checks and PASS/FAIL."""
    header = [
        "corpus",
        "phase",
        "clients",
        "seconds",
        "MiB/s",
        "client s (min/med/max)",
        "errors",
        "blobs verified",
        "upstream blob GETs",
        "proxy VmHWM MiB",
        "CPU proxy/client s",
        "result",
    ]
    rows: list[list[str]] = []
    bars: list[Bar] = []
    for r in runs:
        failures = []
        if r.errors:
            failures.append(f"{len(r.errors)} errors in {r.failed_clients} clients")
        if r.blobs_verified != r.blobs_expected:
            failures.append(f"{r.blobs_verified}/{r.blobs_expected} blobs verified")
        bad = {k: n for k, n in r.statuses.items() if not k.endswith((" 200", "exit 0"))}
        if bad:
            failures.append(f"answers other than 200: {bad}")
        gets = sum(n for k, n in r.upstream.items() if k in ("GET blob", "GET manifest"))
        if r.phase == "hit" and gets:
            failures.append(f"{gets} manifest/blob GETs upstream on a cache hit")
        if r.phase == "cold":
            wrong = {d[:19]: n for d, n in r.upstream_blob_gets.items() if n != 1}
            if wrong:
                failures.append(f"blobs not fetched exactly once upstream: {wrong}")
        name = (
            f"{r.corpus}: {r.clients} concurrent {r.client} clients, "
            + ("cache hit" if r.phase == "hit" else "cold cache, one upstream GET per blob")
            + ", no errors"
        )
        value = f"{len(r.errors)} errors, {r.blobs_verified}/{r.blobs_expected} verified" + (
            f"; {'; '.join(failures)}" if failures else ""
        )
        bars.append(Bar(name, value, not failures))
        blob_gets = (
            f"{sum(r.upstream_blob_gets.values())} for {len(r.upstream_blob_gets)}"
            if r.upstream_blob_gets
            else str(r.upstream.get("GET blob", 0))
        )
        cs = r.client_seconds
        rows.append(
            [
                r.corpus,
                f"{r.phase} ({r.client})",
                str(r.clients),
                f"{r.seconds:.2f}",
                f"{r.mib_s:.0f}",
                f"{cs[0]:.2f}/{statistics.median(cs):.2f}/{cs[-1]:.2f}" if cs else "",
                str(len(r.errors)),
                f"{r.blobs_verified}/{r.blobs_expected}",
                blob_gets,
                f"{r.usage.proxy_peak_mib or 0:.1f}",
                f"{r.usage.proxy_cpu:.1f}/"
                + (f"{r.client_cpu:.1f}" if r.client_cpu is not None else "-"),
                "PASS" if not failures else "FAIL",
            ]
        )
    return render(header, rows, {2, 3, 4, 5, 6, 7, 8, 9, 10}), bars


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--corpus",
        default=",".join(CORPORA),
        help="comma-separated corpora (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="pulls per client and target (default: %(default)s)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS,
        help="concurrent clients, cache hit and cold (default: %(default)s)",
    )
    parser.add_argument(
        "--skopeo-clients",
        type=int,
        default=CLIENTS,
        help="concurrent skopeo copies of the small image, 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--raw-parallel",
        type=int,
        default=6,
        help="blobs curl fetches at a time (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-store",
        choices=("dir", "s3"),
        default="dir",
        help="where the proxy caches: a directory, or S3 (moto's server on loopback, a"
        " Python stand-in: it measures the stand-in as much as the proxy) (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-redirect",
        action="store_true",
        help="with --cache-store s3: the proxy redirects clients to presigned URLs of cached"
        " blobs (the bytes then come from the S3 stand-in)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds before a pull or a phase is given up (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.corpora = pick_corpora(parser, args.corpus, CORPORA)
    if args.rounds < 1 or args.clients < 1 or args.raw_parallel < 1:
        parser.error("--rounds, --clients and --raw-parallel must be at least 1")
    if args.cache_redirect and args.cache_store != "s3":
        parser.error("--cache-redirect needs --cache-store s3")
    return args


@dataclass
class Collected:
    """What one benchmark session measured."""

    machine: dict[str, str]
    images: list[ImageInfo]
    seeding_seconds: dict[str, float]
    pulls: list[PullRun]
    concurrency: list[ConcurrencyRun]
    proxies: dict[str, dict[str, float | int | None]]
    #: Busy processes outside the benchmark seen while it ran, and the load's range.
    foreign: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def collect(workdir: Path, scratch: Path, args: argparse.Namespace) -> Collected:
    """Start the registry and the proxies, run every phase; stop them."""
    skopeo = Skopeo(workdir / "skopeo")
    env = skopeo.env()
    machine = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **tool_versions(skopeo),
        "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
        .stdout.split("\n")[0]
        .split(" (")[0],
    }
    s3: LocalS3 | None = None
    if args.cache_store == "s3":
        s3 = LocalS3().start()
        machine["cache"] = f"S3 (moto {importlib.metadata.version('moto')} on loopback)"
        if args.cache_redirect:
            machine["cache"] += ", --cache-redirect"
    else:
        machine["cache"] = "directory"
    print(f"work dir {workdir}, scratch {scratch}; {machine}", flush=True)
    registry = LocalRegistry(workdir / "upstream", exact_counting=False)
    images: list[ImageInfo] = []
    seeding: dict[str, float] = {}
    pulls: list[PullRun] = []
    concurrency: list[ConcurrencyRun] = []
    proxies: dict[str, dict[str, float | int | None]] = {}
    started: list[ProxyProcess] = []
    watch = ForeignLoad()
    began = time.perf_counter()
    watch.start()

    def start_proxy(name: str) -> ProxyProcess:
        cache: Path | str = workdir / f"cache-{name}"
        proxy_env = env
        if s3 is not None:
            cache = s3.url(s3.bucket(), name)
            proxy_env = {**env, **s3.environment()}
        extra = ["--cache-redirect"] if args.cache_redirect else []
        proxy = ProxyProcess(registry, cache, workdir / f"{name}.log", proxy_env, extra)
        started.append(proxy)
        ready = proxy.start()
        rss = memory_mib(proxy.pid)
        proxies[name] = {"ready_seconds": ready, "start_rss_mib": rss.get("VmRSS")}
        print(
            f"proxy {name}: pid {proxy.pid} on {proxy.host}, ready in {ready:.2f} s, "
            f"RSS {rss.get('VmRSS', 0):.1f} MiB",
            flush=True,
        )
        return proxy

    def stop_proxy(name: str, proxy: ProxyProcess) -> None:
        memory = memory_mib(proxy.pid)
        code = proxy.stop()
        proxies[name].update(
            end_rss_mib=memory.get("VmRSS"), end_hwm_mib=memory.get("VmHWM"), exit_code=code
        )
        print(f"proxy {name}: SIGTERM, exit {code}", flush=True)

    try:
        registry.start()
        for corpus in args.corpora:
            start = time.perf_counter()
            info = seed_corpus(registry, corpus)
            seeding[corpus.name] = time.perf_counter() - start
            images.append(info)
            print(
                f"seeded {corpus.name} ({corpus.description}) into {registry.host}/{info.repo}:"
                f"{info.tag}: {len(info.blobs)} blobs, {info.total_bytes / MiB:.1f} MiB "
                f"in {seeding[corpus.name]:.1f} s",
                flush=True,
            )

        proxy = start_proxy("hit")
        for info in images:
            # Warm the proxy's cache (and the registry's page cache); check it took.
            for target, host in (("warm", proxy.host), ("direct-warm", registry.host)):
                log = workdir / f"{info.corpus}-{target}.log"
                seconds, problems = skopeo_pull(skopeo, host, info, scratch, log, args.timeout)
                print(
                    f"  {info.corpus:<5} {target} pull (skopeo) {seconds:.2f} s "
                    + ("ok" if not problems else "FAILED: " + "; ".join(problems)),
                    flush=True,
                )
                if problems:
                    raise RuntimeError(f"{target} pull of {info.corpus} failed")
        print("throughput: whole pulls, direct and through the proxy (cache hit)", flush=True)
        for info in images:
            pulls += bench_throughput(info, registry, proxy, skopeo, scratch, workdir, args)
        print(f"concurrency: {args.clients} clients at once through the proxy", flush=True)
        for info in images:
            run = concurrent_http("hit", info, registry, proxy, args.clients, workdir, args.timeout)
            concurrency.append(run)
            print_concurrency(run)
            if info.corpus == "small" and args.skopeo_clients:
                run = concurrent_skopeo(
                    info,
                    registry,
                    proxy,
                    skopeo,
                    args.skopeo_clients,
                    scratch,
                    workdir,
                    args.timeout,
                )
                concurrency.append(run)
                print_concurrency(run)
        stop_proxy("hit", proxy)

        for info in images:
            name = f"cold-{info.corpus}"
            proxy = start_proxy(name)
            run = concurrent_http(
                "cold", info, registry, proxy, args.clients, workdir, args.timeout
            )
            concurrency.append(run)
            print_concurrency(run)
            stop_proxy(name, proxy)
    finally:
        foreign = watch.stop()
        for proxy in started:
            proxy.stop()
        registry.stop()
        if s3 is not None:
            s3.stop()
    took = time.perf_counter() - began
    return Collected(machine, images, seeding, pulls, concurrency, proxies, foreign, took)


def report(collected: Collected, args: argparse.Namespace) -> None:
    """Print the tables and the verdicts; write the raw results to `--json`."""
    print()
    print(
        "Throughput: whole pulls (manifest + every blob), medians of "
        f"{args.rounds} runs per client and target; CPU: seconds of the proxy's and the"
        " registry's CPU per pull"
    )
    table, bars = throughput_table(collected.pulls)
    print(table)
    print()
    print(
        f"Concurrency: clients released at once; aiohttp clients fetch {CLIENT_PARALLEL} blobs"
        " at a time and check every sha256; VmHWM is the proxy's peak RSS during the phase"
    )
    ctable, cbars = concurrency_table(collected.concurrency)
    print(ctable)
    bars += cbars
    print()
    print("upstream requests and proxy cache counters per concurrency phase:")
    for r in collected.concurrency:
        counters = ", ".join(f"{k} {v:g}" for k, v in sorted(r.proxy_metrics.items()) if v)
        print(
            f"  {r.corpus} {r.phase} ({r.client}): upstream {r.upstream or '-'}; "
            f"answers {r.statuses}" + (f"; proxy {counters}" if counters else "")
        )
    print()
    print(took_line(collected.seconds, collected.foreign))
    print()
    print(render(["bar", "value", "result"], [[b.name, b.value, b.result] for b in bars], set()))
    print()
    judged = [b for b in bars if b.judged]
    failed = [b for b in judged if not b.passed]
    for b in failed:
        print(f"FAIL {b.name}: {b.value}")
    print(
        f"SUMMARY: {len(judged) - len(failed)}/{len(judged)} bars PASS"
        + (f", {len(failed)} FAIL" if failed else " - all bars met")
    )
    if args.json:
        raw: dict[str, Any] = {
            "machine": collected.machine,
            "images": [asdict(i) for i in collected.images],
            "seeding_seconds": collected.seeding_seconds,
            "proxies": collected.proxies,
            "foreign": collected.foreign,
            "seconds": collected.seconds,
            "pulls": [{**asdict(r), "mib_s": r.mib_s} for r in collected.pulls],
            "concurrency": [{**asdict(r), "mib_s": r.mib_s} for r in collected.concurrency],
            "bars": [{**asdict(b), "result": b.result} for b in bars],
        }
        write_json(args.json, raw)


def took_line(seconds: float, foreign: dict[str, Any]) -> str:
    """How long the session took, the load's range and busy processes outside it."""
    return (
        f"took {seconds:.0f} s; 1-minute load {foreign.get('load_1min_min')} to "
        f"{foreign.get('load_1min_max')} (this benchmark included); busy processes outside "
        f"it (share of a core): {foreign.get('busy_foreign_processes') or 'none'}"
    )


def write_json(path: Path, raw: dict[str, Any]) -> None:
    """Save raw results (`--json`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"raw results written to {path}")


T = TypeVar("T")


def _exit_on_signal(signum: int, _frame: object) -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so that `finally` blocks clean up."""
    raise SystemExit(128 + signum)


def in_workdirs(prefix: str, keep: bool, body: Callable[[Path, Path], T]) -> T:
    """Run `body(workdir, scratch)` in fresh directories, SIGTERM and SIGHUP turned into
    SystemExit; then kill leftover tools and remove both (the work dir stays with `keep`).
    `scratch` is in /dev/shm when there is one: skopeo's dir: copies land in memory, so
    that the disk does not time them."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else workdir))
    try:
        return body(workdir, scratch)
    finally:
        _kill_running_tools()
        shutil.rmtree(scratch, ignore_errors=True)
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; return 0 whatever the verdicts."""
    args = parse_args(argv)
    collected = in_workdirs(
        "ocimirror-bench-proxy-", args.keep, lambda work, scratch: collect(work, scratch, args)
    )
    report(collected, args)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"]:
        sys.exit(client_main(*sys.argv[2:4]))
    sys.exit(main())
