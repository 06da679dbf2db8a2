"""`./scripts/demo` (ocimirror.testkit.demo) runs offline and shows every face: copy and
mirror, a sync pass from a config and its warm pass, a `POST /` to serve with one entry
failing (the Cloud Run answer and the dashboard), and pulls through proxy with its cache.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_shows_every_face() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocimirror.testkit.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as a terminal shows it: the summaries go to stderr
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out
    # copy and mirror, judged by skopeo; their second run writes nothing
    assert "DIFFERENT" not in out
    assert out.count("identical bytes") == 6
    # sync: the first pass copies, the warm pass skips the immutable tags and writes nothing
    assert "ok app: 3 copied, 0 unchanged, 0 immutable, 0 failed" in out
    assert "ok app: 0 copied, 0 unchanged, 3 immutable, 0 failed" in out
    assert "ok tools: 0 copied, 2 unchanged" in out
    assert len(re.findall(r"writes: 0\n", out)) == 2
    # serve: the Cloud Run answer names the failing entry; the dashboard shows the job
    answer = re.search(r"HTTP 200 (\{.*\})\n", out)
    assert answer is not None, out
    assert '"ok":false' in answer.group(1)
    assert "demo/gone:1" in answer.group(1)
    assert re.search(r"dashboard: job \w+ failed: entry 0 copied, entry 1 failed\n", out)
    # proxy: the first pull reaches the upstream, the second is served from the cache
    assert re.search(r"first pull: exit 0, blob GETs at the source: [1-9]", out)
    assert "second pull: exit 0, blob GETs at the source: 0 (all from the cache)" in out
    assert "demo finished (14 commands run)" in out
