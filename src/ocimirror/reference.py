"""Image references, parsed and normalised the way Docker does, plus `oci:` layout paths.

    alpine                          docker.io/library/alpine (tag latest when copied)
    ghcr.io/org/app:1.2@sha256:…     registry ghcr.io, repository org/app, tag and digest
    localhost:5000/app              a loopback registry, reached over plain HTTP
    docker://quay.io/org/app        skopeo's transport prefix is accepted
    oci:./bundle:1.2                an OCI image layout directory, tag 1.2
    oci:./bundle@sha256:…           the same layout, by digest

The grammar is the one of the distribution reference package (`reference.go`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from .errors import ReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
#: Every host name Docker Hub answers to (`is_docker_hub` is the one test for it).
DOCKER_HUB_ALIASES = frozenset(
    {DOCKER_HUB, "index.docker.io", DOCKER_HUB_API, "registry.hub.docker.com"}
)
NAME_TOTAL_LENGTH_MAX = 255

#: The schemes this module parses (`Reference.transport`); stores/schemes.py opens each.
REGISTRY_TRANSPORT = "docker"
LAYOUT_TRANSPORT = "oci"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"

PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT)
REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
DOMAIN_RE = re.compile(_DOMAIN)
TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}


def validate_digest(text: str, where: str) -> str:
    """Return `text` if it is a digest we can verify, else raise ReferenceError."""
    if not DIGEST_RE.fullmatch(text):
        raise ReferenceError(f"{where}: invalid digest {text!r} (expected algorithm:hex)")
    algorithm, hex_part = text.split(":", 1)
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise ReferenceError(f"{where}: unsupported digest algorithm {algorithm!r}")
    if len(hex_part) != length or hex_part != hex_part.lower():
        raise ReferenceError(
            f"{where}: invalid {algorithm} digest: expected {length} lowercase hex characters"
        )
    return text


def _validate_tag(text: str, where: str) -> str:
    if not TAG_RE.fullmatch(text):
        raise ReferenceError(
            f"{where}: invalid tag {text!r} (letters, digits, '_', '.', '-'; at most 128,"
            " not starting with '.' or '-')"
        )
    return text


def is_loopback_host(host: str) -> bool:
    """Tell whether `host[:port]` names this machine (localhost, 127.0.0.0/8, ::1)."""
    h = host
    if h.startswith("["):
        h = h[1 : h.index("]")]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _split_domain(name: str) -> tuple[str, str]:
    """Split `name` into (domain, remainder) with Docker's rule for the first component."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return first, rest
    return "", name


def is_docker_hub(host: str) -> bool:
    """Tell whether a registry host name (any case, no port) is one of Docker Hub's."""
    return host.lower() in DOCKER_HUB_ALIASES


def _normalise_domain(domain: str, where: str) -> str:
    if not DOMAIN_RE.fullmatch(domain):
        raise ReferenceError(f"{where}: invalid registry host {domain!r}")
    if is_docker_hub(domain):
        return DOCKER_HUB
    return domain


def _validate_repository(repo: str, where: str) -> str:
    if not repo:
        raise ReferenceError(f"{where}: missing repository name")
    if repo.lower() != repo and REPOSITORY_RE.fullmatch(repo.lower()):
        raise ReferenceError(f"{where}: repository name must be lowercase")
    if not REPOSITORY_RE.fullmatch(repo):
        bad = next((c for c in repo.split("/") if not PATH_COMPONENT_RE.fullmatch(c)), repo)
        raise ReferenceError(
            f"{where}: invalid repository path component {bad!r} (lowercase letters and"
            " digits, separated by '.', '_', '__' or '-')"
        )
    return repo


@dataclass(frozen=True)
class Reference:
    """A parsed image or repository reference: a registry repository or an OCI layout."""

    transport: str  # the scheme: REGISTRY_TRANSPORT or LAYOUT_TRANSPORT
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a reference, normalised as Docker does; raise ReferenceError naming the fault."""
        where = repr(text)
        if not text or text != text.strip():
            raise ReferenceError(f"{where}: empty or padded reference")
        if text.startswith("oci:"):
            return cls._parse_oci(text[4:], where)
        if text.startswith("docker://"):
            text = text[len("docker://") :]
        elif "://" in text:
            scheme = text.split("://", 1)[0]
            raise ReferenceError(
                f"{where}: unsupported transport {scheme!r} (use a registry reference,"
                " docker://… or oci:DIR[:TAG])"
            )
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            validate_digest(digest, where)
        name, tag = rest, None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            _validate_tag(tag, where)
        if len(name) > NAME_TOTAL_LENGTH_MAX:
            raise ReferenceError(f"{where}: name longer than {NAME_TOTAL_LENGTH_MAX} characters")
        domain, repo = _split_domain(name)
        registry = _normalise_domain(domain, where) if domain else DOCKER_HUB
        _validate_repository(repo, where)
        if registry == DOCKER_HUB and "/" not in repo:
            repo = f"library/{repo}"
        return cls(REGISTRY_TRANSPORT, registry, repo, tag, digest)

    @classmethod
    def _parse_oci(cls, rest: str, where: str) -> Reference:
        path, tag, digest = rest, None, None
        at = rest.rfind("@")
        if at >= 0 and DIGEST_RE.fullmatch(rest[at + 1 :]):
            path, digest = rest[:at], validate_digest(rest[at + 1 :], where)
        elif ":" in rest:
            path, tag = rest.split(":", 1)
            _validate_tag(tag, where)
        if not path:
            raise ReferenceError(f"{where}: missing layout directory after 'oci:'")
        return cls(LAYOUT_TRANSPORT, "", "", tag, digest, path)

    @property
    def api_host(self) -> str:
        """The host the registry API is reached at (registry-1.docker.io for Docker Hub)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def ref(self) -> str:
        """What to ask the store for: the digest if pinned, else the tag, else `latest`."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """The repository's full name, without tag or digest."""
        if self.transport != REGISTRY_TRANSPORT:
            return f"{self.transport}:{self.path}"
        return f"{self.registry}/{self.repository}" if self.repository else self.registry

    @property
    def is_loopback(self) -> bool:
        """Tell whether the registry runs on this machine (plain HTTP allowed)."""
        return self.transport == REGISTRY_TRANSPORT and is_loopback_host(self.registry)

    def with_tag(self, tag: str) -> Reference:
        """Return this repository with `tag` and no digest."""
        return replace(self, tag=_validate_tag(tag, repr(tag)), digest=None)

    def with_digest(self, digest: str) -> Reference:
        """Return this repository pinned to `digest` (no tag)."""
        return replace(self, tag=None, digest=validate_digest(digest, repr(digest)))

    def with_repository(self, repository: str) -> Reference:
        """Return the same registry, tag and digest with another repository."""
        return replace(self, repository=_validate_repository(repository, repr(repository)))

    def repository_only(self) -> Reference:
        """Return the repository without tag or digest."""
        return replace(self, tag=None, digest=None)

    def __str__(self) -> str:
        suffix = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"{self.name}{suffix}"

    def familiar(self) -> str:
        """Docker's short form: `alpine:3.20` rather than `docker.io/library/alpine:3.20`."""
        text = str(self)
        if self.transport == REGISTRY_TRANSPORT and self.registry == DOCKER_HUB:
            text = text[len(DOCKER_HUB) + 1 :]
            if text.startswith("library/") and "/" not in self.repository[len("library/") :]:
                text = text[len("library/") :]
        return text


def parse_prefix(text: str) -> Reference:
    """Parse a destination prefix `REGISTRY[/PATH]` (no tag, no digest, no `library/`)."""
    where = f"destination prefix {text!r}"
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    text = text.rstrip("/")
    if not text:
        raise ReferenceError(f"{where}: empty")
    if text.startswith("oci:") or "@" in text:
        raise ReferenceError(f"{where}: expected REGISTRY[/PATH], without tag or digest")
    domain, repo = _split_domain(text if "/" in text else text + "/")
    if not domain:
        domain, repo = DOCKER_HUB, text
    if ":" in repo:
        raise ReferenceError(f"{where}: expected REGISTRY[/PATH], without tag or digest")
    registry = _normalise_domain(domain, where)
    if repo:
        _validate_repository(repo, where)
    return Reference(REGISTRY_TRANSPORT, registry, repo)


def join_prefix(prefix: Reference, source: Reference) -> Reference:
    """Place `source` under `prefix`, keeping its path: `PREFIX/library/alpine:3.20`."""
    if source.transport != REGISTRY_TRANSPORT:
        raise ReferenceError(f"{source}: only registry images can be mirrored under a prefix")
    repo = f"{prefix.repository}/{source.repository}" if prefix.repository else source.repository
    if len(f"{prefix.registry}/{repo}") > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(
            f"{prefix.registry}/{repo}: name longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    return Reference(REGISTRY_TRANSPORT, prefix.registry, repo, source.tag, source.digest)
