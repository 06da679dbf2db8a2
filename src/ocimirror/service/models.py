"""The HTTP API's request and response models (pydantic), shared by the server and jobs.

The Cloud Run Docker Mirror contract: `{"mirrors": [{"src", "dst"}], "parallelism": 5}`
in, `{"ok": true}` or `{"ok": false, "errors": [{"index", "name", "error"}]}` out, where
`name` is `(SRC to DST)` and `index` the entry's position in `mirrors`. Beyond it, an entry
or the whole request may carry the copy options of the CLI; an entry's own value wins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: Request bodies larger than this answer 413 (the original's limit: 1 MB).
MAX_BODY = 1024 * 1024
#: Copies at once when a request does not say (the original's default).
DEFAULT_PARALLELISM = 5

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


def _integral(value: Any) -> Any:
    """A JSON number without a fraction is an integer, as JSON Schema says: 5.0 is 5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: The integer fields of a request: strict (no bool, no string), but 5.0 counts as 5.
#: (The bounds go inside, before the validator, to stay `minimum`/`maximum` in the schema.)
Latest = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
Parallelism = Annotated[int, Field(ge=0, le=256), BeforeValidator(_integral)]


class _Strict(BaseModel):
    """Unknown fields are errors, as the original's DisallowUnknownFields; no coercion.

    As the OpenAPI document (and Go's decoder) say: `"parallelism": false` or `"5"` and
    `"all_tags": "true"` or `1` are invalid values, not 0, 5 and True.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class CopyOptionsModel(_Strict):
    """Copy options of the CLI; unset (None) means "inherit" (from the request, else off)."""

    all_tags: bool | None = Field(
        default=None, description="Copy every tag of a repository (the filters select)."
    )
    include: list[str] | None = Field(default=None, description="Tags to keep (full regex).")
    exclude: list[str] | None = Field(default=None, description="Tags to drop (full regex).")
    semver: str | None = Field(default=None, description="A semver range of tags, e.g. >=1.2.")
    latest: Latest | None = Field(default=None, description="Only the N highest versions.")
    platforms: list[str] | None = Field(
        default=None, description="os/arch[/variant] globs; all platforms when unset."
    )
    include_foreign: bool | None = Field(
        default=None, description="Copy foreign (non-distributable) layers too."
    )
    referrers: bool | None = Field(
        default=None,
        description="Copy signatures, SBOMs and attestations with each image (default true).",
    )
    referrers_include: list[str] | None = Field(
        default=None, description="Only referrers whose artifactType matches one of these globs."
    )
    referrers_exclude: list[str] | None = Field(
        default=None, description="No referrers whose artifactType matches one of these globs."
    )
    require_signed: bool | None = Field(
        default=None, description="Skip (and report) images without a signature."
    )


class MirrorEntry(CopyOptionsModel):
    """One copy: a source reference and a destination reference."""

    src: str = Field(description="Source image (`postgres` = docker.io/library/postgres:latest).")
    dst: str = Field(description="Destination image or repository.")

    @property
    def name(self) -> str:
        """`(SRC to DST)`, as the Cloud Run mirror names an entry."""
        return f"({self.src} to {self.dst})"

    def resolved(self, request: CopyOptionsModel) -> ResolvedOptions:
        """This entry's options, falling back to the request's, then to the defaults."""
        values: dict[str, Any] = {}
        for name in CopyOptionsModel.model_fields:
            mine = getattr(self, name)
            values[name] = mine if mine is not None else getattr(request, name)
        return ResolvedOptions(**{k: v for k, v in values.items() if v is not None})


class ResolvedOptions(BaseModel):
    """The copy options in force for one entry."""

    model_config = ConfigDict(frozen=True)

    all_tags: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver: str | None = None
    latest: int | None = None
    platforms: tuple[str, ...] = ()
    include_foreign: bool = False
    referrers: bool = True
    referrers_include: tuple[str, ...] = ()
    referrers_exclude: tuple[str, ...] = ()
    require_signed: bool = False


class MirrorRequest(CopyOptionsModel):
    """The body of `POST /` and `POST /api/v1/jobs`."""

    mirrors: list[MirrorEntry] = Field(
        default_factory=list, description="The copies to make, in order."
    )
    parallelism: Parallelism = Field(
        default=DEFAULT_PARALLELISM,
        description="Entries copied at once (0 means the default, 5).",
    )

    @property
    def workers(self) -> int:
        """Entries copied at once (0 is the default, as in the original)."""
        return self.parallelism or DEFAULT_PARALLELISM


class EntryError(BaseModel):
    """One failed entry of a Cloud Run mirror request."""

    index: int
    name: str
    error: str


class MirrorResponse(BaseModel):
    """The answer to `POST /`: `{"ok": true}`, or `ok` false with the errors."""

    ok: bool
    errors: list[EntryError] | None = None

    def body(self) -> bytes:
        """The exact bytes the original writes: compact JSON, `errors` only when failing."""
        return self.model_dump_json(exclude_none=True).encode() + b"\n"


class EntryResult(BaseModel):
    """What happened to one entry of a job."""

    index: int
    name: str
    status: Literal["pending", "running", "copied", "unchanged", "failed", "cancelled"]
    images: int = 0
    copied: int = 0
    bytes: int = 0
    error: str | None = None
    digests: dict[str, str] = Field(
        default_factory=dict, description="destination reference → digest written there"
    )


class Progress(BaseModel):
    """How far a job got."""

    done: int = 0
    total: int = 0
    bytes: int = 0


class JobView(BaseModel):
    """A job as the API shows it."""

    id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Progress()
    entries: list[EntryResult] = []
    errors: list[EntryError] = []
    request: dict[str, Any] = {}


class JobAccepted(BaseModel):
    """The answer to `POST /api/v1/jobs` (202)."""

    id: str
    state: JobState
    joined: bool = Field(description="True when the request joined a job already running.")
    url: str


class MirrorView(BaseModel):
    """A configured mirror as `GET /api/v1/mirrors` shows it."""

    name: str
    sources: list[str]
    targets: list[str]
    schedule: str
    running: bool
    last_run: datetime | None = None
    last_status: str | None = None
    last_error: str | None = None
    last_success: datetime | None = None
    next_run: datetime | None = None


class ApiError(BaseModel):
    """An error answer of the JSON API."""

    error: str
    detail: list[dict[str, Any]] | None = None
