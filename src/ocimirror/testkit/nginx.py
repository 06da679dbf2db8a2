"""Debian's nginx on loopback serving a `file://` bucket layout: the static-registry recipe.

`SERVER_BLOCK` is the recipe of docs/static-registry.md, word for word (a test checks
that the document carries it): the layout directory as `root`, `/v2/` answered with `{}`,
and each manifest served from its typed twin (`<ref>.oci-index`, ...) so its
Content-Type is its media type. `StaticNginx(root).start()` runs it on a free port, in
the foreground of a child process, with its pid, logs and temp dirs in a work directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from .child import http_answers
from .lifecycle import StartStop, await_child, terminate
from .registry import free_port

#: The `types` and `server` blocks of the recipe; {root} and {listen} are filled in.
SERVER_BLOCK = """\
types {
    application/vnd.oci.image.index.v1+json                    oci-index;
    application/vnd.oci.image.manifest.v1+json                 oci-manifest;
    application/vnd.docker.distribution.manifest.list.v2+json  docker-list;
    application/vnd.docker.distribution.manifest.v2+json       docker-manifest;
}
default_type application/octet-stream;

server {
    listen {listen};
    root {root};

    location = /v2/ {
        add_header Docker-Distribution-API-Version registry/2.0 always;
        default_type application/json;
        return 200 '{}';
    }
    # By digest: the digest is the name, and immutable.
    location ~ "^/v2/.+/manifests/(sha256:[0-9a-f]{64})$" {
        add_header Docker-Distribution-API-Version registry/2.0 always;
        add_header Docker-Content-Digest $1 always;
        add_header Cache-Control "public, max-age=31536000, immutable";
        try_files $uri.oci-index $uri.oci-manifest $uri.docker-list $uri.docker-manifest =404;
    }
    # By tag: the typed twin gives the media type; tags move, so cache briefly.
    location ~ ^/v2/.+/manifests/[^/]+$ {
        add_header Docker-Distribution-API-Version registry/2.0 always;
        add_header Cache-Control "public, max-age=60";
        try_files $uri.oci-index $uri.oci-manifest $uri.docker-list $uri.docker-manifest =404;
    }
    location ~ ^/v2/.+/tags/list$ {
        add_header Docker-Distribution-API-Version registry/2.0 always;
        default_type application/json;
    }
    location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}$" {
        add_header Docker-Distribution-API-Version registry/2.0 always;
        add_header Cache-Control "public, max-age=31536000, immutable";
    }
    location / {
        return 404;
    }
}
"""


def nginx_config(root: Path, listen: str, work: Path) -> str:
    """Return a whole nginx.conf around the recipe, for a private instance in `work`."""
    server = SERVER_BLOCK.replace("{root}", str(root)).replace("{listen}", listen)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temps = "".join(
        f"    {kind}_temp_path {work / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    body = "".join(f"    {line}\n" if line else "\n" for line in server.splitlines())
    return (
        f"{user}worker_processes 1;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {work / 'access.log'};\n{temps}{body}}}\n"
    )


class StaticNginx(StartStop):
    """Debian's nginx serving the layout directory `root` on a free loopback port."""

    def __init__(self, root: Path) -> None:
        """Pick a port; nothing runs until `start()`."""
        self.root = Path(root)
        self.port = free_port()
        self.work = Path(tempfile.mkdtemp(prefix="ocimirror-nginx-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """Return `127.0.0.1:PORT`, as an image reference's registry."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Write the config and run nginx in the foreground until `stop()`."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.work / "nginx.conf"
        conf.write_text(nginx_config(self.root, f"127.0.0.1:{self.port}", self.work))
        log = (self.work / "stderr.log").open("wb")
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.work), "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        await_child(
            self._proc,
            lambda: http_answers(f"http://{self.host}/v2/"),
            "nginx",
            lambda: (self.work / "stderr.log").read_text(),
            self.stop,
            timeout=30,
        )
        return self

    def stop(self) -> None:
        """Stop nginx and remove its work directory."""
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None
        shutil.rmtree(self.work, ignore_errors=True)


__all__ = ["SERVER_BLOCK", "StaticNginx", "nginx_config"]
