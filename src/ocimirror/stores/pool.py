"""StorePool: opens one Store per place (registry host, layout directory, ...) and closes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..auth.credentials import Credentials, Keychain
from ..client import HostOptions, RegistryClient, endpoint_for
from ..reference import Reference
from ..store import Store
from .registry import RegistryStore
from .schemes import Opening, scheme_for


class StorePool:
    """Hands out Stores for references, sharing one client per host and options."""

    def __init__(
        self, *, keychain: Keychain | None = None, settings: Mapping[str, object] | None = None
    ) -> None:
        """`settings`: what the config says about places, by place (a bucket's settings
        keyed `s3://BUCKET`, `r2://ACCOUNT/BUCKET`...), handed to the scheme that opens it."""
        self.keychain = keychain or Keychain()
        self.settings = dict(settings or {})
        self._stores: dict[tuple[object, ...], Store] = {}

    async def store_for(
        self,
        ref: Reference,
        *,
        options: HostOptions | None = None,
        credentials: Credentials | None = None,
        create: bool = False,
    ) -> Store:
        """Return the Store holding `ref`; `credentials` override the keychain's.

        The store is opened by the scheme of `ref` (stores/schemes.py); host options and
        the keychain only apply to a scheme that names a registry host: without
        `credentials` its client asks the pool's keychain itself, request by request, so
        that credentials that expire or are rotated are renewed while the store is open. A
        scheme that `takes_credentials` gets the `credentials` given here (a bucket's
        access key).
        """
        scheme = scheme_for(ref)
        opts: HostOptions | None = None
        keychain: Keychain | None = None
        if scheme.registry_host:
            opts = options or HostOptions()
            endpoint = endpoint_for(ref.registry) or endpoint_for(ref.api_host, opts)
            if endpoint != opts.endpoint:
                opts = replace(opts, endpoint=endpoint)
            keychain = self.keychain if credentials is None else None
        elif not scheme.takes_credentials:
            credentials = None
        place = scheme.place(ref)
        key = (scheme.name, place, opts, credentials)
        if key not in self._stores:
            opening = Opening(
                options=opts,
                credentials=credentials,
                keychain=keychain,
                create=create,
                settings=self.settings.get(place),
            )
            self._stores[key] = scheme.open(ref, opening)
        return self._stores[key]

    def registry_clients(self) -> list[RegistryClient]:
        """Return the registry clients opened so far (for request accounting)."""
        return [s.client for s in self._stores.values() if isinstance(s, RegistryStore)]

    async def close(self) -> None:
        """Close every store."""
        for store in self._stores.values():
            await store.close()
        self._stores.clear()
