"""`podman pull` isolated from the host: private storage and configuration (skopeo's)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .skopeo import Skopeo


def podman_pull(skopeo: Skopeo, ref: str) -> subprocess.CompletedProcess[str]:
    """`podman pull --tls-verify=false ref` as root with private storage, vfs driver.

    Podman refuses a run root longer than 50 characters: both live in a short temp dir.
    """
    top = Path(tempfile.mkdtemp(prefix="ocim-pm-", dir="/tmp"))
    try:
        root, run = top / "root", top / "run"
        conf = top / "storage.conf"
        conf.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{run}"\ngraphroot = "{root}"\n')
        cmd = [
            "podman",
            "--root",
            str(root),
            "--runroot",
            str(run),
            "--storage-driver",
            "vfs",
            "pull",
            "--tls-verify=false",
            "--signature-policy",
            str(skopeo.policy),
            ref,
        ]
        env = {**skopeo.env(), "CONTAINERS_STORAGE_CONF": str(conf)}
        return subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=120, check=False
        )
    finally:
        shutil.rmtree(top, ignore_errors=True)


__all__ = ["podman_pull"]
