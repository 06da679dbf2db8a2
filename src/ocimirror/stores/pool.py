"""StorePool: opens one Store per place (registry host or layout directory) and closes them."""

from __future__ import annotations

from ..auth.credentials import Credentials, Keychain
from ..client import HostOptions, RegistryClient
from ..reference import Reference
from ..store import Store
from .layout import LayoutStore
from .registry import RegistryStore


class StorePool:
    """Hands out Stores for references, sharing one client per host and options."""

    def __init__(self, *, keychain: Keychain | None = None) -> None:
        self.keychain = keychain or Keychain()
        self._stores: dict[tuple[object, ...], Store] = {}

    async def store_for(
        self,
        ref: Reference,
        *,
        options: HostOptions | None = None,
        credentials: Credentials | None = None,
        create: bool = False,
    ) -> Store:
        """Return the Store holding `ref`; `credentials` override the keychain's."""
        if ref.transport == "oci":
            key: tuple[object, ...] = ("oci", ref.path)
            if key not in self._stores:
                self._stores[key] = LayoutStore(ref.path, create=create)
            return self._stores[key]
        opts = options or HostOptions()
        creds = (
            credentials if credentials is not None else await self.keychain.resolve(ref.registry)
        )
        key = ("docker", ref.api_host, opts, creds)
        if key not in self._stores:
            client = RegistryClient(ref.api_host, credentials=creds, options=opts)
            self._stores[key] = RegistryStore(client)
        return self._stores[key]

    def registry_clients(self) -> list[RegistryClient]:
        """Return the registry clients opened so far (for request accounting)."""
        return [s.client for s in self._stores.values() if isinstance(s, RegistryStore)]

    async def close(self) -> None:
        """Close every store."""
        for store in self._stores.values():
            await store.close()
        self._stores.clear()
