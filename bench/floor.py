"""The floor of a warm trusting pass: its requests sent by the barest aiohttp client.

A warm `trust_state` pass of `bench/sync.py` sends 540 requests: the source's 20 tags
lists, a manifest HEAD per source tag (500) and the target's 20 tags lists. `bare_pass`
sends the same requests with nothing around them (one session, a semaphore, no auth, no
retries, no limiter, no planning, no state), the HEADs of a repository once its list is
in, as the pass does. Its time at the best concurrency is the floor this machine and these
two registries allow: what is left above it is ocimirror's own cost.

`bench/sync.py` measures it after the resident passes, against the same registries:

    floor = measure_floor(src.url, dst.url, repos, targets, rounds=3)

Run alone against registries already seeded (as `bench/sync.py --keep` leaves them, once
restarted), it prints the same table:

    .venv/bin/python bench/floor.py SRC_URL DST_URL --prefix mirror
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from ocimirror.mediatypes import MANIFEST_ACCEPT as ACCEPT

CONCURRENCIES: tuple[int, ...] = (8, 16, 32, 64)


@dataclass
class Floor:
    """Seconds of the bare pass per concurrency (one entry per round), and its CPU."""

    seconds: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)
    requests: int = 0

    @property
    def best(self) -> tuple[int, float]:
        """The concurrency with the lowest median time, and that median."""
        medians = {c: statistics.median(s) for c, s in self.seconds.items()}
        c = min(medians, key=lambda k: medians[k])
        return c, medians[c]


async def bare_pass(
    session: aiohttp.ClientSession,
    src_url: str,
    dst_url: str,
    repos: Sequence[str],
    targets: Sequence[str],
    concurrency: int,
) -> int:
    """Send a trusting pass's requests; return how many were sent."""
    sem = asyncio.Semaphore(concurrency)
    sent = 0

    async def get_tags(url: str) -> list[str]:
        nonlocal sent
        async with sem, session.get(url) as resp:
            sent += 1
            resp.raise_for_status()
            tags: list[str] = (await resp.json())["tags"] or []
            return tags

    async def head(repo: str, tag: str) -> None:
        nonlocal sent
        url = f"{src_url}/v2/{repo}/manifests/{tag}"
        async with sem, session.head(url, headers={"Accept": ACCEPT}) as resp:
            sent += 1
            resp.raise_for_status()
            if not resp.headers.get("Docker-Content-Digest"):
                raise RuntimeError(f"{url}: no Docker-Content-Digest")

    async def source(repo: str) -> None:
        tags = await get_tags(f"{src_url}/v2/{repo}/tags/list")
        await asyncio.gather(*(head(repo, t) for t in tags))

    await asyncio.gather(
        *(source(r) for r in repos),
        *(get_tags(f"{dst_url}/v2/{t}/tags/list") for t in targets),
    )
    return sent


async def _measure(
    src_url: str,
    dst_url: str,
    repos: Sequence[str],
    targets: Sequence[str],
    rounds: int,
    concurrencies: Sequence[int],
) -> Floor:
    floor = Floor()
    connector = aiohttp.TCPConnector(limit=max(concurrencies))
    async with aiohttp.ClientSession(connector=connector) as session:
        await bare_pass(session, src_url, dst_url, repos, targets, max(concurrencies))  # warm
        for _ in range(rounds):
            for c in concurrencies:
                cpu, start = time.process_time(), time.perf_counter()
                floor.requests = await bare_pass(session, src_url, dst_url, repos, targets, c)
                floor.seconds.setdefault(c, []).append(time.perf_counter() - start)
                floor.cpu.setdefault(c, []).append(time.process_time() - cpu)
    return floor


def measure_floor(
    src_url: str,
    dst_url: str,
    repos: Sequence[str],
    targets: Sequence[str],
    *,
    rounds: int = 3,
    concurrencies: Sequence[int] = CONCURRENCIES,
) -> Floor:
    """Time the bare pass `rounds` times at each concurrency, the concurrencies interleaved."""
    return asyncio.run(_measure(src_url, dst_url, repos, targets, rounds, concurrencies))


def floor_lines(floor: Floor) -> list[str]:
    """The floor as text: each concurrency's runs and client CPU, and the best."""
    out = []
    for c, runs in floor.seconds.items():
        cpu = statistics.median(floor.cpu[c])
        out.append(
            f"  {c:3d} in flight: median {statistics.median(runs):.3f} s"
            f" (runs {' '.join(f'{s:.3f}' for s in runs)}), client CPU {cpu:.3f} s"
        )
    c, best = floor.best
    out.append(f"  floor: {best:.3f} s ({floor.requests} requests, {c} in flight)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the floor against two running registries and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("src_url", help="the source registry, http://127.0.0.1:PORT")
    parser.add_argument("dst_url", help="the target registry, http://127.0.0.1:PORT")
    parser.add_argument("--prefix", default="mirror", help="the target prefix (default: mirror)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    args = parser.parse_args(argv)
    repos = [f"bench/r{i:02d}" for i in range(20)]
    floor = measure_floor(
        args.src_url.rstrip("/"),
        args.dst_url.rstrip("/"),
        repos,
        [f"{args.prefix}/{r}" for r in repos],
        rounds=args.rounds,
    )
    load = os.getloadavg()[0]
    print(f"bare aiohttp client, the requests of a warm trusting pass (1-minute load {load:.1f}):")
    print("\n".join(floor_lines(floor)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
