"""Adaptive per-host limits against a registry front that allows N requests per second.

The front's rate is real time, so the test asserts on counts (requests refused); the
throughput is a bench figure (bench/adaptive.py), never asserted here, and so is today's
fixed-limits baseline (adaptive: false), which the bench runs beside it.
"""

from __future__ import annotations

from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.throttled import copy_through_limit, seed_tiny

#: The issue's figure is 500 tags (bench/adaptive.py runs that); 150 keep the test near
#: 40 s on a shared 2-core machine (seeding included) with the same request mix. The rate
#: is one a loaded 2-core machine's copy outruns (it managed ~30 requests/s unpaced).
TAGS = 150
RATE = 20.0


async def test_copy_through_a_rate_limit_is_rarely_refused(
    src_registry: LocalRegistry, dst_registry: LocalRegistry
) -> None:
    await seed_tiny(src_registry, "many", TAGS)
    run = await copy_through_limit(src_registry, dst_registry, "many", rate=RATE, adaptive=True)
    print(
        f"adaptive: {run.allowed} allowed, {run.refused} refused"
        f" ({run.refused_fraction:.1%}), {run.throughput / RATE:.2f} of the front's rate"
    )
    assert run.summary.ok, [r.error for r in run.summary.failed]
    assert len(run.summary.results) == TAGS
    assert run.allowed >= 3 * TAGS  # a manifest, a config and a layer per tag at least
    assert run.refused >= 1  # the copy did outrun the front: the limit was felt
    # The bar (under 5% refused) is a bench figure (bench/adaptive.py: 3.1% and
    # 4.2% on 500 tags): learning the first rate costs some 40 refusals whatever the run's
    # length, a larger share of 150 tags, and depends on the machine's speed. Fixed limits
    # refuse ~59%; this bound tells adaptive limits from fixed ones whatever the machine.
    assert run.refused_fraction < 0.15
