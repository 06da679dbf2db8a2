"""Benchmark `ocimirror copy --all-tags` into a bucket (moto's S3 on loopback) beside the
registry-to-registry copy of the same corpus.

Run it as `.venv/bin/python bench/bucket.py [--corpus large,multiarch] [--json PATH]`.
Each corpus is pushed once into a source registry; then ocimirror copies the repository,
cold then warm, into a fresh S3 bucket and into a fresh destination registry. Each run
reports the wall time, the child's peak RSS (measured as bench/run.py does) and the
requests the destination answered (moto's log; the registry's access log). After each
bucket run every tag's manifest object is checked: its digest metadata and bytes match the
source's digest. The RSS bar is bench/run.py's (150 MiB); the exit status is 0 (a report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ocimirror import digest as digests
from ocimirror.reference import Reference
from ocimirror.stores.buckets import BucketSettings, open_bucket
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.seeding import seed_sync
from run import CORPORA, OCIMIRROR, RSS_BAR_MIB, Expected, pick_corpora, run_measured


@dataclass
class BucketRun:
    """One run: corpus, phase, destination kind, and what it cost."""

    corpus: str
    phase: str
    target: str
    code: int
    seconds: float
    rss_mib: float
    requests: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Tell whether the run succeeded, was right and stayed under the RSS bar."""
        return self.code == 0 and not self.problems and self.rss_mib < RSS_BAR_MIB


def verify_bucket(s3: LocalS3, bucket: str, repo: str, expected: Expected) -> list[str]:
    """Check every tag's manifest object in the bucket against the source's digest."""
    settings = BucketSettings(
        endpoint=s3.endpoint, region="us-east-1", access_key_id="x", secret_access_key="x"
    )
    store = open_bucket(Reference.parse(f"s3://{bucket}/{repo}"), settings)

    async def check() -> list[str]:
        problems = []
        for tag, dg in expected.tags.items():
            desc = await store.head_manifest(repo, tag)
            if desc is None or desc.digest != dg:
                problems.append(f"{tag}: {desc.digest if desc else 'missing'} != {dg}")
                continue
            m = await store.get_manifest(repo, tag)
            if digests.of(m.raw) != dg:
                problems.append(f"{tag}: bytes hash to {digests.of(m.raw)}")
        return problems

    return asyncio.run(check())


def bench_corpus(name: str, workdir: Path, s3: LocalS3, timeout: float) -> list[BucketRun]:
    """Push a corpus, then copy it cold and warm into a bucket and into a registry."""
    corpus = CORPORA[name]
    src = LocalRegistry(workdir / f"src-{name}", exact_counting=False).start()
    dst = LocalRegistry(workdir / f"dst-{name}", exact_counting=False).start()
    runs: list[BucketRun] = []
    try:
        expected = Expected()
        seed_sync(src, corpus.repo, expected.record(corpus.make()))
        bucket = s3.bucket()
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_REGION": "us-east-1",
        }
        targets = {
            "bucket": f"s3://{bucket}/{corpus.repo}",
            "registry": f"{dst.host}/{corpus.repo}",
        }
        for target, ref in targets.items():
            cmd = [
                str(OCIMIRROR),
                "copy",
                "--all-tags",
                "--quiet",
                f"{src.host}/{corpus.repo}",
                ref,
            ]
            for phase in ("cold", "warm"):
                before, mark = s3.requests(), dst.mark()
                log = workdir / f"{name}-{target}-{phase}.log"
                code, seconds, rss = run_measured(cmd, env, log, timeout)
                if target == "bucket":
                    after = s3.requests()
                    asked = {k: after[k] - before[k] for k in after if after[k] != before[k]}
                    problems = verify_bucket(s3, bucket, corpus.repo, expected)
                else:
                    asked = dict(Counter(r.method for r in dst.requests(since=mark)))
                    problems = []
                run = BucketRun(name, phase, target, code, seconds, rss, asked, problems)
                runs.append(run)
                status = "ok" if run.ok else f"FAIL (exit {code}; {'; '.join(problems)})"
                print(
                    f"  {name:<9} {phase:<4} {target:<8} {seconds:8.2f} s {rss:7.1f} MiB"
                    f"  dst {dict(sorted(asked.items()))}  {status}",
                    flush=True,
                )
    finally:
        src.stop()
        dst.stop()
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", default="large", help="comma-separated: small,large,multiarch")
    parser.add_argument("--json", type=Path, metavar="PATH", help="save raw results as JSON")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    args = parser.parse_args(argv)
    corpora = pick_corpora(parser, args.corpus, CORPORA)
    workdir = Path(tempfile.mkdtemp(prefix="ocimirror-bench-bucket-"))
    runs: list[BucketRun] = []
    try:
        with LocalS3() as s3:
            for corpus in corpora:
                runs += bench_corpus(corpus.name, workdir, s3, args.timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [r for r in runs if not r.ok]
    print(f"SUMMARY: {len(runs) - len(failed)} of {len(runs)} runs ok (RSS bar {RSS_BAR_MIB} MiB)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
