"""Image references, parsed and normalised the way Docker does, plus `oci:` layout paths.

    alpine                          docker.io/library/alpine (tag latest when copied)
    ghcr.io/org/app:1.2@sha256:…     registry ghcr.io, repository org/app, tag and digest
    localhost:5000/app              a loopback registry, reached over plain HTTP
    docker://quay.io/org/app        skopeo's transport prefix is accepted
    oci:./bundle:1.2                an OCI image layout directory, tag 1.2
    oci:./bundle@sha256:…           the same layout, by digest
    s3://bucket/app:1.2             repository app in an S3 bucket (also gs://BUCKET/…)
    az://account/container/app      the same in an Azure container
    r2://account/bucket/app         the same in a Cloudflare R2 bucket
    s3:us-east-1:bucket:app         docker-sync's forms: s3:REGION:BUCKET:IMAGE and
    r2:account:bucket:app           r2:ACCOUNT-ID:BUCKET:IMAGE
    file:///srv/www//app:1.2        the bucket layout in a directory ('//' ends the directory)

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
#: The bucket schemes (stores/objectstore.py): the registry layout in object storage.
BUCKET_TRANSPORTS = ("s3", "gs", "az", "r2", "file")
#: The bucket schemes docker-sync writes as `SCHEME:REGION-OR-ACCOUNT:BUCKET[:IMAGE]`.
COLON_BUCKET_TRANSPORTS = ("s3", "r2")
_BUCKET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
_REGION_RE = re.compile(r"[a-z0-9-]{1,32}")
_COLON_FORM_RE = re.compile(r"([a-z][a-z0-9]*):[^:/@]+:[^:/@]+(?::|$)")

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


def _image_part(rest: str, where: str) -> tuple[str, str | None, str | None]:
    """Split `REPO[:TAG][@DIGEST]` inside a bucket and check each part."""
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        validate_digest(digest, where)
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], _validate_tag(rest[colon + 1 :], where)
    if len(rest) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(f"{where}: name longer than {NAME_TOTAL_LENGTH_MAX} characters")
    return _validate_repository(rest, where), tag, digest


def _check(pattern: re.Pattern[str], value: str, what: str, where: str) -> str:
    if not pattern.fullmatch(value):
        raise ReferenceError(f"{where}: invalid {what} {value!r}")
    return value


def _refuse_control(text: str, where: str) -> None:
    """Refuse a control character (NUL, CR, LF...): never part of a name, nor of a path
    (an `oci:` layout, a `file://` directory) that is opened or written to."""
    control = next((c for c in text if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:
        raise ReferenceError(f"{where}: contains a control character ({control!r})")


def _parse_bucket_place(
    text: str, where: str, *, whole: bool = False
) -> tuple[Reference, str] | None:
    """Parse the bucket part of a bucket reference: (the bucket, what follows it), or None
    when `text` is not one. With `whole`, a `file://` path without '//' is all directory."""
    _refuse_control(text, where)
    scheme, sep, rest = text.partition("://")
    if sep and scheme in BUCKET_TRANSPORTS:
        if scheme == "file":
            directory, dsep, after = rest.partition("//")
            if not directory.startswith("/") or directory == "/":
                raise ReferenceError(f"{where}: file:// needs an absolute directory")
            if not dsep and not whole and "/" in directory.rstrip("/"):
                raise ReferenceError(
                    f"{where}: end the directory with '//' before the repository"
                    " (file:///srv/www//library/alpine)"
                )
            return Reference("file", directory.rstrip("/"), ""), after
        parts = rest.split("/", 2 if scheme in ("az", "r2") else 1)
        if scheme in ("az", "r2"):
            if len(parts) < 2:
                owner = "ACCOUNT/CONTAINER" if scheme == "az" else "ACCOUNT/BUCKET"
                raise ReferenceError(f"{where}: expected {scheme}://{owner}/REPOSITORY")
            account = _check(_ACCOUNT_RE, parts[0], "account", where)
            name = _check(_BUCKET_NAME_RE, parts[1], "bucket or container name", where)
            return Reference(scheme, f"{account}/{name}", ""), "/".join(parts[2:])
        bucket = _check(_BUCKET_NAME_RE, parts[0], "bucket name", where)
        return Reference(scheme, bucket, ""), "/".join(parts[1:])
    scheme, sep, rest = text.partition(":")
    if sep and scheme in COLON_BUCKET_TRANSPORTS and text.split("/", 1)[0].count(":") >= 2:
        parts = rest.split(":", 2)
        if len(parts) < 2:
            owner = "REGION" if scheme == "s3" else "ACCOUNT-ID"
            raise ReferenceError(f"{where}: expected {scheme}:{owner}:BUCKET[:IMAGE]")
        bucket = _check(_BUCKET_NAME_RE, parts[1], "bucket name", where)
        after = parts[2] if len(parts) > 2 else ""
        if scheme == "s3":
            region = _check(_REGION_RE, parts[0], "region", where)
            return Reference("s3", bucket, "", region=region), after
        account = _check(_ACCOUNT_RE, parts[0], "account id", where)
        return Reference("r2", f"{account}/{bucket}", ""), after
    return None


def split_bucket(text: str) -> tuple[Reference, str] | None:
    """Split a bucket URL into the bucket and the path after it (`s3://BUCKET/PATH`,
    `file:///DIR//PATH`; a `file://` path without '//' is all directory), or None when
    `text` names no bucket; ReferenceError for a bucket scheme with a bad name."""
    return _parse_bucket_place(text, f"bucket {text!r}", whole=True)


def parse_bucket(text: str) -> Reference:
    """Parse a bucket's own name (`s3://bucket`, `s3:REGION:BUCKET`, `r2:ACCOUNT:BUCKET`,
    `az://ACCOUNT/CONTAINER`, `file:///dir`), as config keys write it."""
    where = f"bucket {text!r}"
    found = _parse_bucket_place(text, where, whole=True)
    if found is None:
        raise ReferenceError(
            f"{where}: expected s3://BUCKET, gs://BUCKET, az://ACCOUNT/CONTAINER,"
            " r2://ACCOUNT/BUCKET, file:///DIR, s3:REGION:BUCKET or r2:ACCOUNT-ID:BUCKET"
        )
    ref, rest = found
    if rest:
        raise ReferenceError(f"{where}: a bucket, without repository ({rest!r})")
    return ref


@dataclass(frozen=True)
class Reference:
    """A parsed image or repository reference: a registry repository or an OCI layout."""

    #: The scheme: REGISTRY_TRANSPORT, LAYOUT_TRANSPORT or one of BUCKET_TRANSPORTS. For
    #: a bucket, `registry` is the bucket (`ACCOUNT/NAME` for az and r2; the directory
    #: for file) and `repository` the repository inside it.
    transport: str
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    path: str = ""
    #: The bucket's region, when the reference names it (`s3:REGION:BUCKET:IMAGE`).
    region: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a reference, normalised as Docker does; raise ReferenceError naming the fault."""
        where = repr(text)
        if not text or text != text.strip():
            raise ReferenceError(f"{where}: empty or padded reference")
        _refuse_control(text, where)
        if text.startswith("oci:"):
            return cls._parse_oci(text[4:], where)
        bucket = _parse_bucket_place(text, where)
        if bucket is not None:
            ref, rest = bucket
            repo, tag, digest = _image_part(rest, where)
            return replace(ref, repository=repo, tag=tag, digest=digest)
        if text.startswith("docker://"):
            text = text[len("docker://") :]
        elif "://" in text:
            scheme = text.split("://", 1)[0]
            raise ReferenceError(
                f"{where}: unsupported transport {scheme!r} (use a registry reference,"
                " docker://…, oci:DIR[:TAG], or a bucket: s3://, gs://, az://, r2://, file://)"
            )
        odd = _COLON_FORM_RE.match(text)
        if odd and "/" not in text.split("@", 1)[0]:
            raise ReferenceError(
                f"{where}: unknown bucket scheme {odd.group(1)!r} (docker-sync's forms are"
                " s3:REGION:BUCKET:IMAGE and r2:ACCOUNT-ID:BUCKET:IMAGE)"
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
        if self.transport in BUCKET_TRANSPORTS:
            return self.place + (
                (f":{self.repository}" if self.region else f"{self._sep}{self.repository}")
                if self.repository
                else ""
            )
        if self.transport != REGISTRY_TRANSPORT:
            return f"{self.transport}:{self.path}"
        return f"{self.registry}/{self.repository}" if self.repository else self.registry

    @property
    def place(self) -> str:
        """A bucket's own name, without repository: `s3://bucket`, `r2://account/bucket`,
        `file:///dir` (`s3:REGION:BUCKET` when written with its region)."""
        if self.region:
            return f"{self.transport}:{self.region}:{self.registry}"
        return f"{self.transport}://{self.registry}"

    @property
    def _sep(self) -> str:
        return "//" if self.transport == "file" else "/"

    @property
    def is_bucket(self) -> bool:
        """Tell whether the reference names a repository in a bucket (or its file form)."""
        return self.transport in BUCKET_TRANSPORTS

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
    bucket = _parse_bucket_place(text, where, whole=True)
    if bucket is not None:
        ref, rest = bucket
        rest = rest.strip("/")
        if "@" in rest or ":" in rest:
            raise ReferenceError(f"{where}: expected a bucket[/PATH], without tag or digest")
        return replace(ref, repository=_validate_repository(rest, where) if rest else "")
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
    if prefix.is_bucket:
        if len(repo) > NAME_TOTAL_LENGTH_MAX:
            raise ReferenceError(f"{repo}: name longer than {NAME_TOTAL_LENGTH_MAX} characters")
        return replace(prefix, repository=repo, tag=source.tag, digest=source.digest)
    if len(f"{prefix.registry}/{repo}") > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(
            f"{prefix.registry}/{repo}: name longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    return Reference(REGISTRY_TRANSPORT, prefix.registry, repo, source.tag, source.digest)
