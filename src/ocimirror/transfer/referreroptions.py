"""Which referrers to copy (`ReferrerOptions`), and which tags hold referrers, not images.

Apart from `transfer.referrers` (which re-exports every name here) so that the config
(`settings.config`) and a tag filter can use them without importing what finds and
copies referrers (structlog, manifests, stores): `ocimirror status` reads a config and
needs none of those.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..errors import ConfigError

#: The artifactTypes that count as a signature for `require_signed`.
SIGNATURE_TYPES = frozenset(
    {
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.cncf.notary.signature",
    }
)

#: cosign's tag suffixes and the artifactType the filters see for each.
COSIGN_SUFFIXES: dict[str, str] = {
    "sig": "application/vnd.dev.cosign.artifact.sig.v1+json",
    "att": "application/vnd.dev.cosign.artifact.att.v1+json",
    "sbom": "application/vnd.dev.cosign.artifact.sbom.v1+json",
}


@dataclass(frozen=True)
class ReferrerOptions:
    """What to do about referrers; every face builds one of these (on by default).

    `include`/`exclude` are artifactType globs (`application/vnd.dev.cosign.*`); an
    excluded type is neither copied nor followed. `require_signed` skips an image that has
    no signature (`SIGNATURE_TYPES`, or a cosign `.sig` tag). Unchanged images are checked
    again on every pass, except tags a sync mirror declares immutable (`check_immutable`
    to include them) and, where a state database remembers the last pass, within
    `check_interval` seconds of it.
    """

    enabled: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    require_signed: bool = False
    check_immutable: bool = False
    check_interval: float | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"referrers {name} must be a list of globs, not {value!r}")
            items = tuple(value)
            for item in items:
                if not isinstance(item, str) or not item:
                    raise ConfigError(f"referrers {name}: {item!r} is not an artifactType glob")
            object.__setattr__(self, name, items)
        if self.check_interval is not None and not self.check_interval >= 0:
            raise ConfigError(f"referrers check_interval must be >= 0, not {self.check_interval}")
        if self.require_signed and not self.enabled:
            raise ConfigError("require_signed needs referrers enabled (drop --no-referrers)")

    def wants(self, artifact_type: str) -> bool:
        """Tell whether referrers of this artifactType are copied."""
        if self.include and not any(fnmatch.fnmatchcase(artifact_type, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(artifact_type, p) for p in self.exclude)

    @property
    def server_filter(self) -> str | None:
        """The one artifactType the referrers API may filter on, when the filters allow."""
        if self.require_signed or len(self.include) != 1 or self.exclude:
            return None
        pattern = self.include[0]
        return None if any(c in pattern for c in "*?[") else pattern


NO_REFERRERS = ReferrerOptions(enabled=False)


def is_referrer_tag(tag: str) -> bool:
    """Tell whether a tag is a fallback index or a cosign tag, never an image of its own."""
    alg, _, rest = tag.partition("-")
    if alg != "sha256" or len(rest) < 64:
        return False
    hexpart, suffix = rest[:64], rest[64:]
    if not all(c in "0123456789abcdef" for c in hexpart):
        return False
    return suffix == "" or (suffix.startswith(".") and suffix[1:] in COSIGN_SUFFIXES)
