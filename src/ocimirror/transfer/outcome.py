"""What one copy of the jobs API did: the part of an entry's result its images decide.

`Outcome.of` summarises the image results of one entry (its status, counts, bytes, the
digests written, one readable error line); `fields` gives what it sets of the entry's
result. `serve` (in-process) and the queue workers (a job handed to them) both use it, so
a job's entries read the same whichever way they were copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import scrub
from .copy import ImageResult


def one_line(text: str) -> str:
    """Collapse an error message to one line of single spaces."""
    return " ".join(text.split()) or "unknown error"


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

    def fields(self) -> dict[str, Any]:
        """What this outcome sets of an entry's result (as the API's JSON has it)."""
        return {
            "status": self.status,
            "images": self.images,
            "copied": self.copied,
            "bytes": self.bytes,
            "error": self.error,
            "digests": dict(self.digests),
        }


def _public(result: ImageResult) -> str:
    """A failed image's error as the API shows it (the detail is in the server log)."""
    return one_line(result.public_error or scrub(result.error))
