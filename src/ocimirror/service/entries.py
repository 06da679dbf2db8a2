"""One entry of a mirror request: the copy it asks for, and what that copy did.

`plan_entry` parses an entry into a `Plan`: source, destination and resolved options, or
the one-line error that stops it. Its `key` (normalised source, normalised destination,
options) names the copy, so two entries asking for the same one share it. `Outcome`
summarises what a copy did; `apply_outcome` makes it the result of each entry awaiting it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError, OcimirrorError, scrub
from ..netpolicy import AddressPolicy
from ..reference import Reference
from ..stores.schemes import scheme_for
from ..transfer.copy import ImageResult
from ..transfer.options import Selection, parse_platforms, tag_filter
from ..transfer.plan import destination_for
from ..transfer.referrers import ReferrerOptions
from .models import EntryResult, MirrorEntry, MirrorRequest, ResolvedOptions

#: What identifies one copy: normalised source, normalised destination, options.
FlightKey = tuple[str, str, ResolvedOptions]


def one_line(text: str) -> str:
    """Collapse an error message to one line of single spaces."""
    return " ".join(text.split()) or "unknown error"


@dataclass(frozen=True)
class Plan:
    """One entry, parsed: what to copy and with which options, or why it cannot be."""

    key: FlightKey
    options: ResolvedOptions
    src: Reference | None = None
    dst: Reference | None = None
    error: str | None = None


def selection_of(options: ResolvedOptions) -> Selection:
    """What an entry selects; filters without `all_tags`, or a bad filter, are an error."""
    return Selection(
        all_tags=options.all_tags,
        tags=tag_filter(
            all_tags=options.all_tags,
            include=options.include,
            exclude=options.exclude,
            semver=options.semver,
            latest=options.latest,
        ),
    )


def referrers_of(options: ResolvedOptions) -> ReferrerOptions:
    """The referrer options of an entry (ConfigError when they contradict each other)."""
    return ReferrerOptions(
        enabled=options.referrers,
        include=options.referrers_include,
        exclude=options.referrers_exclude,
        require_signed=options.require_signed,
    )


def plan_entry(entry: MirrorEntry, request: MirrorRequest, policy: AddressPolicy | None) -> Plan:
    """Parse an entry; a bad reference or option, or a refused registry, is its error."""
    options = entry.resolved(request)
    try:
        src, dst = Reference.parse(entry.src), Reference.parse(entry.dst)
        for ref in (src, dst):
            if not scheme_for(ref).registry_host:
                raise ConfigError(f"{ref}: only registry references are accepted here")
            refused = policy.refusal(ref.api_host) if policy is not None else None
            if refused is not None:
                raise refused
        if not options.all_tags:
            dst = destination_for(src, dst)
        selection_of(options)
        referrers_of(options)
        parse_platforms(options.platforms)
    except (OcimirrorError, ValueError) as e:
        # Keyed apart from every valid entry: the raw text cannot parse.
        return Plan(("!" + entry.src, entry.dst, options), options, error=one_line(str(e)))
    return Plan((str(src), str(dst), options), options, src, dst)


@dataclass(frozen=True)
class Outcome:
    """What one copy did: the part of an EntryResult shared by every entry awaiting it."""

    status: Literal["copied", "unchanged", "failed", "cancelled"]
    images: int = 0
    copied: int = 0
    bytes: int = 0
    error: str | None = None
    digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str) -> Outcome:
        """An outcome with nothing copied and this error."""
        return cls("failed", error=one_line(error))

    @classmethod
    def of(cls, results: list[ImageResult]) -> Outcome:
        """Summarise the image results of one entry."""
        failed = [r for r in results if r.status == "failed"]
        error = None
        if len(results) == 1 and failed:
            error = _public(failed[0])
        elif failed:
            shown = "; ".join(f"{r.destination}: {_public(r)}" for r in failed[:3])
            more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
            error = f"{len(failed)} of {len(results)} images failed: {shown}{more}"
        skipped = [r for r in results if r.status == "skipped"]
        if skipped and error is None:  # require_signed: reported, not failed
            names = ", ".join(r.destination for r in skipped[:3])
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            error = f"{len(skipped)} of {len(results)} images skipped (unsigned): {names}{more}"
        copied = sum(1 for r in results if r.status == "copied")
        status: Literal["copied", "unchanged", "failed"] = (
            "failed" if failed else "copied" if copied else "unchanged"
        )
        return cls(
            status,
            images=len(results),
            copied=copied,
            bytes=sum(r.bytes_copied for r in results),
            error=error,
            digests={
                r.destination: r.destination_digest
                for r in results
                if r.status not in ("failed", "skipped")
            },
        )


def _public(result: ImageResult) -> str:
    """A failed image's error as the API shows it (the detail is in the server log)."""
    return one_line(result.public_error or scrub(result.error))


def apply_outcome(result: EntryResult, outcome: Outcome) -> None:
    """Record a copy's outcome as an entry's result."""
    result.status = outcome.status
    result.images = outcome.images
    result.copied = outcome.copied
    result.bytes = outcome.bytes
    result.error = outcome.error
    result.digests = dict(outcome.digests)
