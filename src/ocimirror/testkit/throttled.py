"""A copy through a rate-limited front: the scenario of the adaptive-limits test and bench.

`seed_tiny` pushes many tiny images into a source registry; `copy_through_limit` puts a
`Front` that allows `rate` requests per second (429 above it) before that registry and
copies every tag to a destination with the engine, adaptive limits on or off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..client import HostOptions
from ..reference import Reference
from ..transfer.engine import RunSummary, Side, run_copies
from .front import Front, TokenBucket, rate_limited
from .images import make_image
from .registry import LocalRegistry
from .seeding import seed


async def seed_tiny(registry: LocalRegistry, repo: str, tags: int) -> None:
    """Push `tags` tiny one-layer images (every blob distinct) into `repo`."""
    images = (
        (f"t{i:04d}", make_image(layers=1, layer_size=64, seed=f"tiny-{repo}-{i}"))
        for i in range(tags)
    )
    await seed(registry, repo, images, concurrency=16)


@dataclass
class ThrottledRun:
    """What one copy through the limited front did."""

    summary: RunSummary
    #: Requests the front allowed and refused with a 429.
    allowed: int
    refused: int
    #: Seconds from the first to the last request the front allowed.
    seconds: float
    #: The front's rate (requests per second).
    rate: float

    @property
    def refused_fraction(self) -> float:
        """Refused requests over all requests the front saw."""
        total = self.allowed + self.refused
        return self.refused / total if total else 0.0

    @property
    def throughput(self) -> float:
        """Allowed requests per second over the run."""
        return self.allowed / self.seconds if self.seconds > 0 else 0.0


async def copy_through_limit(
    src: LocalRegistry,
    dst: LocalRegistry,
    repo: str,
    *,
    rate: float,
    adaptive: bool,
    dest_repo: str | None = None,
    image_concurrency: int = 32,
) -> ThrottledRun:
    """Copy every tag of `src/repo` through a front allowing `rate` requests per second."""
    bucket = TokenBucket(rate)
    async with Front(src, rate_limited(bucket)).running() as front:
        options = HostOptions(adaptive=adaptive)
        pair = (
            Reference.parse(f"{front.host}/{repo}"),
            Reference.parse(f"{dst.host}/{dest_repo or repo}"),
        )
        started = time.monotonic()
        summary = await run_copies(
            [pair],
            all_tags=True,
            source=Side(options=options),
            image_concurrency=image_concurrency,
        )
        ended = time.monotonic()
    first, last = bucket.first or started, bucket.last or ended
    return ThrottledRun(summary, bucket.allowed, bucket.refused, last - first, rate)
