"""Which registry addresses may be reached on behalf of someone else (an API caller).

`ocimirror serve` copies images named by whoever calls its API, with its own network
position: without a policy a caller could make it fetch from loopback services, cloud
metadata (169.254.169.254) or the private network. An `AddressPolicy` says what is allowed:

- hosts named explicitly (`host`, `host:port`, globs such as `*.corp.example`), at whatever
  address they resolve to: a name without a port allows every port of that host;
- address ranges named explicitly (`10.1.0.0/16`);
- any other host only when every address it resolves to is public: loopback, private
  (RFC 1918), link-local (the metadata address), shared (CGNAT 100.64/10), unique local
  (fc00::/7), unspecified, multicast and reserved addresses are refused, IPv4-mapped,
  NAT64 and 6to4 IPv6 forms of them too; `allow_private` lifts this.

It is enforced where connections are made, after name resolution (`GuardedConnector`), so
redirects, token realms and DNS answers that change between a check and the connection
are all covered; `refusal` is the same rule for a host alone, decided without resolving
names, for refusing a request before any connection is attempted.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .errors import AddressRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

if not hasattr(aiohttp.TCPConnector, "_resolve_host"):  # pragma: no cover
    raise ImportError("aiohttp.TCPConnector._resolve_host is gone: GuardedConnector needs it")

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def split_host(host: str) -> tuple[str, int | None]:
    """Split `host[:port]` (IPv6 in brackets) into a lowercase host and a port or None."""
    text = host.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{host!r}: unclosed '[' in an IPv6 address")
        name, rest = text[1:end], text[end + 1 :]
    elif text.count(":") == 1:
        name, _, port = text.partition(":")
        rest = ":" + port
    else:
        name, rest = text, ""
    if not rest:
        return name, None
    port = rest.removeprefix(":")
    if not rest.startswith(":") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{host!r}: expected HOST[:PORT]")
    return name, int(port)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_refusal(addr: Address) -> str | None:
    """Why an address is not public (a few words), or None for a public address."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded)
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_loopback:
        return "loopback address"
    if addr.is_link_local:
        return "link-local address"
    if addr.is_multicast:
        return "multicast address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "shared (CGNAT) address"
    if isinstance(addr, ipaddress.IPv6Address) and addr in ipaddress.ip_network("fc00::/7"):
        return "unique local address"
    if addr.is_private:
        return "private address"
    if not addr.is_global or addr.is_reserved:
        return "reserved address"
    return None


def _pattern(entry: str) -> tuple[str, int | None] | Network:
    """Parse one allowed entry: an address range, or a host (glob) with an optional port."""
    if "/" in entry:
        try:
            return ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r}: expected HOST[:PORT] or an address range") from None
    if not entry.strip():
        raise ValueError("an empty registry name")
    return split_host(entry)


@dataclass(frozen=True)
class AddressPolicy:
    """Registry hosts and addresses that may be reached for a caller (see the module)."""

    #: Allowed hosts (`host`, `host:port`, globs) and address ranges (`10.0.0.0/8`).
    allowed: tuple[str, ...] = ()
    #: Allow private, loopback and link-local addresses for every host.
    allow_private: bool = False
    #: How the operator allows a refused registry, appended to the refusal.
    hint: str = ""
    #: Resolves names at connection time (None: aiohttp's default); tests map names here.
    resolver: AbstractResolver | None = None

    def __post_init__(self) -> None:
        for entry in self.allowed:
            _pattern(entry)  # ValueError naming the bad entry

    def _hosts(self) -> Iterable[tuple[str, int | None]]:
        for entry in self.allowed:
            p = _pattern(entry)
            if isinstance(p, tuple):
                yield p

    def _networks(self) -> Iterable[Network]:
        for entry in self.allowed:
            p = _pattern(entry)
            if not isinstance(p, tuple):
                yield p

    def names(self, host: str, port: int | None) -> bool:
        """Tell whether `host` on `port` is allowed by name (None: on some port)."""
        host = host.lower().rstrip(".")
        for name, allowed_port in self._hosts():
            if allowed_port is not None and port is not None and allowed_port != port:
                continue
            if fnmatch.fnmatchcase(host, name):
                return True
        return False

    def address_refusal(self, addr: Address) -> str | None:
        """Why `addr` may not be connected to (for a host not allowed by name), or None."""
        if self.allow_private or any(addr in net for net in self._networks()):
            return None
        return address_refusal(addr)

    def refused(self, host: str, port: int | None, reason: str) -> AddressRefused:
        """The error refusing `host`: what, why, and how to allow it."""
        shown = f"[{host}]" if ":" in host else host
        if port is not None:
            shown += f":{port}"
        text = f"registry {shown} is not allowed: {reason}"
        return AddressRefused(text + (f"; {self.hint}" if self.hint else ""))

    def refusal(self, registry: str) -> AddressRefused | None:
        """The refusal of `registry` (`host[:port]`) decided without resolving its name.

        Addresses and `localhost` are decided here; other names are allowed here and
        checked at connection time, once resolved.
        """
        host, port = split_host(registry)
        if self.names(host, port):
            return None
        if host == "localhost" or host.endswith(".localhost"):
            addr: Address | None = ipaddress.IPv4Address("127.0.0.1")
        else:
            addr = _address(host)
        reason = None if addr is None else self.address_refusal(addr)
        return None if reason is None else self.refused(host, port, reason)

    def check_resolved(self, host: str, port: int, addresses: Sequence[str]) -> None:
        """Raise AddressRefused unless `host` is named or every address is allowed."""
        if self.names(host, port):
            return
        for text in addresses:
            addr = _address(text.split("%", 1)[0])
            reason = "unreadable address" if addr is None else self.address_refusal(addr)
            if reason is not None:
                raise self.refused(host, port, reason)

    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """A TCPConnector (with `kwargs`) that connects only where this policy allows."""
        return GuardedConnector(self, resolver=self.resolver, **kwargs)


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that refuses, after resolution, addresses its policy does not allow.

    Every connection resolves its host here (aiohttp answers literal addresses without
    the resolver, and from its DNS cache), so this one check covers them all.
    """

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        results: list[ResolveResult] = await super()._resolve_host(host, port, traces=traces)
        self.policy.check_resolved(host, port, [r["host"] for r in results])
        return results
