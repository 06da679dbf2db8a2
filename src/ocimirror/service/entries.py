"""One entry of a mirror request: the copy it asks for, and what that copy did.

`plan_entry` parses an entry into a `Plan`: source, destination and resolved options, or
the one-line error that stops it. Its `key` (normalised source, normalised destination,
options) names the copy, so two entries asking for the same one share it. `Outcome`
summarises what a copy did (`transfer.outcome`, shared with the queue workers, which
finish the jobs handed to them); `apply_outcome` makes it the result of each entry
awaiting it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, OcimirrorError
from ..netpolicy import AddressPolicy
from ..reference import Reference
from ..stores.schemes import scheme_for
from ..transfer.copy import CopyOptions
from ..transfer.options import Selection, parse_platforms, tag_filter
from ..transfer.outcome import Outcome, one_line
from ..transfer.plan import destination_for
from ..transfer.referrers import ReferrerOptions
from .models import EntryResult, MirrorEntry, MirrorRequest, ResolvedOptions

#: What identifies one copy: normalised source, normalised destination, options.
FlightKey = tuple[str, str, ResolvedOptions]


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


def copy_options_of(options: ResolvedOptions) -> CopyOptions:
    """The copy options of an entry: its platforms, foreign layers and referrers."""
    return CopyOptions(
        platforms=options.platforms,
        include_foreign=options.include_foreign,
        referrers=referrers_of(options),
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


def apply_outcome(result: EntryResult, outcome: Outcome) -> None:
    """Record a copy's outcome as an entry's result."""
    for key, value in outcome.fields().items():
        setattr(result, key, value)


__all__ = ["FlightKey", "Outcome", "Plan", "apply_outcome", "one_line", "plan_entry"]
