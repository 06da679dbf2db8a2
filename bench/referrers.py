"""What referrers cost a warm sync pass: requests per tag, with and without them.

Run it as `.venv/bin/python bench/referrers.py [--tags N] [--json PATH]`. It starts two
Debian `docker-registry` (distribution 2.8) processes on 127.0.0.1, pushes N tags of small
images into the source, signs every other one (a cosign `.sig` tag and an OCI 1.1
signature referrer) and gives every fourth an SPDX SBOM, then runs one-shot sync passes
in this process (`ocimirror.sync.runner.sync_pass`, the code `ocimirror sync` runs):

- `fallback`: the source as it is, without the referrers API (fallback tags);
- `api`: the source behind `ocimirror.testkit.referrersfront.ReferrersFront`, which adds
  the OCI 1.1 referrers API (the destination too, answering `OCI-Subject`);
- `off`: `referrers: {enabled: false}`, the cost of the images alone;
- `fallback-trust`, `api-trust`: the same with `trust_state: true` and a SQLite state
  database (issue 17: the target is listed, not HEADed, for a tag the state recorded).

Each variant gets its own destination: a cold pass, then a warm pass with nothing new.
The warm pass's requests at both registries (the front's log in the API case, which sees
every request) are printed per tag. The plan lists both repositories (a whole repository
is mirrored, 40 tags go to one target), so referrer tags are read from those lists. The
exit status is 0: this is a report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ocimirror.client import RegistryClient
from ocimirror.settings.loading import parse_config
from ocimirror.state.db import StateDB
from ocimirror.stores.registry import RegistryStore
from ocimirror.sync.runner import sync_pass
from ocimirror.testkit.artifacts import (
    cosign_signature,
    fallback_tag_of,
    push_fallback,
    signature_referrer,
    spdx_sbom,
)
from ocimirror.testkit.images import make_image, push
from ocimirror.testkit.referrersfront import ReferrersFront
from ocimirror.testkit.registry import LocalRegistry

REPO = "bench/app"


async def seed(host: str, tags: int, *, api: bool) -> None:
    """Push the images and their referrers (by the fallback schema unless `api`)."""
    store = RegistryStore(RegistryClient(host))
    try:
        for i in range(tags):
            image = make_image(layer_size=512, seed=f"bench-{i}")
            await push(store, REPO, image, f"1.{i}.0")
            referrers = []
            if i % 2 == 0:
                sig = cosign_signature(image.descriptor)
                await push(store, REPO, sig, fallback_tag_of(image.digest) + ".sig")
                referrers.append(signature_referrer(image.descriptor))
            if i % 4 == 0:
                referrers.append(spdx_sbom(image.descriptor))
            if api:
                for r in referrers:
                    await push(store, REPO, r)
            elif referrers:
                await push_fallback(store, REPO, image.digest, *referrers)
    finally:
        await store.close()


def config(src: str, dst: str, extra: str = "") -> Any:
    return parse_config(
        f"mirrors:\n  - name: bench\n    source: {src}/{REPO}\n    targets: [{dst}/{REPO}]\n{extra}"
    )


async def variant(name: str, work: Path, tags: int) -> dict[str, Any]:
    src = LocalRegistry(work / f"{name}-src", exact_counting=False).start()
    dst = LocalRegistry(work / f"{name}-dst", exact_counting=False).start()
    trust = name.endswith("-trust")
    extra = "    trust_state: true\n" if trust else ""
    async with StateDB(f"sqlite:///{work}/{name}-state.db") as db:
        state = db if trust else None
        try:
            if name.startswith("api"):
                async with (
                    ReferrersFront(src).running() as sfront,
                    ReferrersFront(dst).running() as dfront,
                ):
                    await seed(sfront.host, tags, api=True)
                    cfg = config(sfront.host, dfront.host, extra)
                    await sync_pass(cfg, state=state)
                    marks = len(sfront.seen), len(dfront.seen)
                    (warm,) = await sync_pass(cfg, state=state)
                    seen = sfront.seen[marks[0] :] + dfront.seen[marks[1] :]
                    counts = Counter(f"{s.method} {s.kind}" for s in seen)
            else:
                await seed(src.host, tags, api=False)
                if name == "off":
                    extra = "    referrers: {enabled: false}\n"
                cfg = config(src.host, dst.host, extra)
                await sync_pass(cfg, state=state)
                m1, m2 = src.mark(), dst.mark()
                (warm,) = await sync_pass(cfg, state=state)
                seen_reqs = src.requests(since=m1) + dst.requests(since=m2)
                counts = Counter(f"{r.method} {r.kind}" for r in seen_reqs)
        finally:
            src.stop()
            dst.stop()
    total = sum(counts.values())
    return {
        "variant": name,
        "tags": tags,
        "status": warm.status,
        "requests": total,
        "per_tag": round(total / tags, 3),
        "by_kind": dict(sorted(counts.items())),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocimirror-bench-referrers-") as tmp:
        results = [
            await variant(v, Path(tmp), args.tags)
            for v in ("off", "fallback", "api", "fallback-trust", "api-trust")
        ]
    print(f"warm sync pass, {args.tags} tags (half signed, a quarter with an SBOM)")
    print(f"{'variant':<15} {'status':<8} {'requests':>9} {'per tag':>8}  by kind")
    for r in results:
        kinds = ", ".join(f"{k} {n}" for k, n in r["by_kind"].items())
        print(f"{r['variant']:<15} {r['status']:<8} {r['requests']:>9} {r['per_tag']:>8}  {kinds}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
