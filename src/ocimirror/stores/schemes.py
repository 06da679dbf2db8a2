"""The store schemes: one table from a reference's scheme to the Store that holds it.

    docker   a registry repository (`ghcr.io/org/app`, `docker://…`)   RegistryStore
    oci      an OCI image layout directory (`oci:DIR[:TAG]`)          LayoutStore
    s3 gs    a bucket in the registry layout (`s3://BUCKET/REPO`,      BucketStore
    az r2    `az://ACCOUNT/CONTAINER/REPO`, `r2:ACCOUNT:BUCKET:REPO`,
    file     `file:///DIR//REPO`)

`StorePool` opens every store through this table, so adding a backend is one
`register(Scheme(...))` beside a parser for its reference form: nothing else compares
scheme names. What a caller must
know about a reference before a store is open (does it take host options and registry
credentials?) is a field of its `Scheme`; what it may ask once a store is open (does a
listing save requests? does it check digests itself?) is an attribute of the `Store`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..auth.credentials import Credentials, Keychain
from ..client import HostOptions, RegistryClient
from ..errors import ReferenceError
from ..reference import BUCKET_TRANSPORTS, LAYOUT_TRANSPORT, REGISTRY_TRANSPORT, Reference
from ..store import Store
from .buckets import BucketSettings, bucket_key, open_bucket
from .layout import LayoutStore
from .registry import RegistryStore


@dataclass(frozen=True)
class Opening:
    """What `StorePool` gives a scheme's factory besides the reference."""

    #: The registry host's connection settings (None unless the scheme is `registry_host`).
    options: HostOptions | None = None
    #: The credentials the caller gave for the registry host, presented as they are.
    credentials: Credentials | None = None
    #: Without `credentials`: the keychain the registry client asks (the pool's).
    keychain: Keychain | None = None
    #: Make the place on the first write when it does not exist (a destination).
    create: bool = False
    #: What the config says about this place (a bucket's `BucketSettings`), if anything.
    settings: object = None


#: Opens the Store for a reference; called once per place, options and credentials.
StoreFactory = Callable[[Reference, Opening], Store]


@dataclass(frozen=True)
class Scheme:
    """How references of one scheme are opened, and what is known about them up front."""

    #: The scheme's name, as `Reference.transport` spells it (`docker`, `oci`).
    name: str
    #: Opens the Store for a reference (no I/O needed: a store may connect lazily).
    open: StoreFactory
    #: The place one Store serves (a registry host, a directory): references of the same
    #: place, options and credentials share one Store.
    place: Callable[[Reference], str]
    #: The reference names a registry host: host options (TLS, plain HTTP, request
    #: limits) and the keychain's credentials for that host apply to it.
    registry_host: bool = False
    #: Credentials given by the caller (`--dest-creds`, a config entry) reach the factory
    #: (a bucket's access key id and secret); the keychain is only for registry hosts.
    takes_credentials: bool = False


def _open_registry(ref: Reference, opening: Opening) -> Store:
    client = RegistryClient(
        ref.api_host,
        credentials=opening.credentials,
        keychain=opening.keychain,
        options=opening.options or HostOptions(),
    )
    return RegistryStore(client)


def _open_layout(ref: Reference, opening: Opening) -> Store:
    return LayoutStore(ref.path, create=opening.create)


def _open_bucket(ref: Reference, opening: Opening) -> Store:
    settings = opening.settings if isinstance(opening.settings, BucketSettings) else None
    return open_bucket(ref, settings, opening.credentials, create=opening.create)


_SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> None:
    """Add a scheme to the table; a name registered twice is a bug, refused."""
    if scheme.name in _SCHEMES:
        raise ValueError(f"store scheme {scheme.name!r} is already registered")
    _SCHEMES[scheme.name] = scheme


def unregister(name: str) -> None:
    """Remove a scheme from the table (tests that register their own)."""
    _SCHEMES.pop(name, None)


def known_schemes() -> list[str]:
    """Return the registered scheme names, sorted."""
    return sorted(_SCHEMES)


def scheme_for(ref: Reference) -> Scheme:
    """Return the scheme that opens `ref`; an unknown one is a ReferenceError naming it."""
    scheme = _SCHEMES.get(ref.transport)
    if scheme is None:
        raise ReferenceError(
            f"{ref}: unknown store scheme {ref.transport!r} (known: {', '.join(known_schemes())})"
        )
    return scheme


register(Scheme(REGISTRY_TRANSPORT, _open_registry, place=lambda r: r.api_host, registry_host=True))
register(Scheme(LAYOUT_TRANSPORT, _open_layout, place=lambda r: r.path))
for _bucket_scheme in BUCKET_TRANSPORTS:
    register(
        Scheme(
            _bucket_scheme,
            _open_bucket,
            place=bucket_key,
            takes_credentials=True,
        )
    )

__all__ = ["Opening", "Scheme", "StoreFactory", "known_schemes", "register", "scheme_for"]
