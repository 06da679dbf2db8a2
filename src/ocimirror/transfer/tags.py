"""Tag selection for repository copies: semantic versions, version ranges and tag filters.

`Version` reads a semantic version out of a tag, `SemverRange` is a version constraint in
the syntax of Masterminds/semver (used by dregsy and Helm) and npm, and `TagFilter` combines
exact tags, include/exclude regexes, a range and "latest N" into the list of tags to copy.

How the parts of a `TagFilter` combine (the way dregsy/regsync/skopeo-sync users expect):

* Exact `tags` are always selected, whether or not the registry lists them (a missing one
  surfaces as NotFound when it is copied), unless an `exclude` regex matches them.
* The *listed* tags of the repository are selected when no exact tags are given, or when
  any of `include`, `semver` or `latest` is set. A listed tag must fully match one
  `include` regex (when any), must fully match no `exclude` regex, must be a version in the
  `semver` range (when set); of the survivors, versions outside the `latest` N highest are
  dropped (when set). Exclusion happens before "latest", so excluded tags take no slot.
* The result is the union of both, without duplicates. So `tags=("latest",)` alone copies
  just `latest`, and `tags=("latest",), semver=">=1.20"` copies `latest` plus every version
  tag from 1.20 up.

Why it is long: tag selection is one idea in three parts that only serve each other:
`Version` (reading a version out of a tag), `SemverRange` (two range syntaxes) and
`TagFilter`; the range grammar is most of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..patterns import TagPattern, compile_pattern
from .referreroptions import is_referrer_tag

__all__ = ["SemverRange", "TagFilter", "Version", "natural_key", "shown", "split_listed"]

_NUM = r"0|[1-9][0-9]*"
# Minor and patch may carry leading zeros ("22.04", "2024.01.15"); see `Version.parse`.
_LOOSE_NUM = r"[0-9]+"
_IDENT = r"[0-9A-Za-z-]+"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
_VERSION_RE = re.compile(
    rf"v?(?P<major>{_NUM})(?:\.(?P<minor>{_LOOSE_NUM}))?(?:\.(?P<patch>{_LOOSE_NUM}))?"
    rf"(?:-(?P<pre>{_DOTTED}))?(?:\+(?P<build>{_DOTTED}))?"
)
_WILD = r"[xX*]"
_PARTIAL_RE = re.compile(
    rf"v?(?P<major>{_NUM}|{_WILD})(?:\.(?P<minor>{_LOOSE_NUM}|{_WILD}))?"
    rf"(?:\.(?P<patch>{_LOOSE_NUM}|{_WILD}))?(?:-(?P<pre>{_DOTTED}))?(?:\+(?P<build>{_DOTTED}))?"
)
_IDENT_RE = re.compile(_IDENT)
_DOTTED_RE = re.compile(_DOTTED)
_OPERATORS = ("~>", ">=", "=>", "<=", "=<", "!=", "=", ">", "<", "~", "^")
_OP_RE = "|".join(re.escape(op) for op in _OPERATORS)
# An operator may be followed by spaces (">= 1.2"), but not by another operator ("> =1").
_TOKEN_RE = re.compile(rf"(?:{_OP_RE})\s*[^\s<>=!~^]\S*|\S+")
_COMPARATOR_RE = re.compile(rf"(?P<op>{_OP_RE})?(?P<version>.*)", re.DOTALL)
#: The tag grammar of the OCI distribution spec.
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: Longer strings are never versions: this keeps int() far from its digit limit.
_MAX_VERSION_LEN = 255

PrereleaseId = str | int


def _split_prerelease(text: str) -> tuple[PrereleaseId, ...] | None:
    """Split a dotted prerelease into identifiers; None when a numeric one has a leading 0."""
    out: list[PrereleaseId] = []
    for part in text.split("."):
        if part.isdigit():  # the caller's regex already limited `part` to ASCII
            if len(part) > 1 and part[0] == "0":
                return None
            out.append(int(part))
        else:
            out.append(part)
    return tuple(out)


@dataclass(frozen=True)
class Version:
    """A semantic version read from a tag (v1.2.3, 1.2, 1.2.3-rc.1, 1.2.3+build).

    Ordering follows semver 2.0 precedence: major, minor and patch numerically, a
    prerelease below its release, prerelease identifiers compared left to right (numeric
    ones numerically and below alphanumeric ones, alphanumeric ones in ASCII order, a
    shorter list below a longer one it prefixes). Build metadata is ignored by ordering,
    equality and hashing, so `1.0.0+a == 1.0.0+b`; the tag strings of course differ.
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[PrereleaseId, ...] = ()
    build: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("major", "minor", "patch"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"version {name} must be a non-negative int, got {value!r}")
        for ident in self.prerelease:
            if type(ident) is int:
                if ident < 0:
                    raise ValueError(f"negative prerelease identifier {ident!r}")
            elif not (
                isinstance(ident, str) and _IDENT_RE.fullmatch(ident) and not ident.isdigit()
            ):
                raise ValueError(f"invalid prerelease identifier {ident!r}")
        if self.build and not _DOTTED_RE.fullmatch(self.build):
            raise ValueError(f"invalid build metadata {self.build!r}")

    @classmethod
    def parse(cls, tag: str) -> Version | None:
        """Read a version from a tag; None when the tag is not one.

        Accepted: an optional leading `v`, then 1 to 3 dot-separated numbers (a missing
        minor or patch is 0, as Masterminds' NewVersion coerces), then an optional
        `-prerelease` and `+build`. Like Masterminds/semver, a suffix such as `-alpine` is a
        prerelease: `1.25-alpine` is 1.25.0-alpine, below 1.25.0 and outside ranges that do
        not mention a prerelease. Rejected: 4-part versions (`1.2.3.4`), a leading zero in
        the major (`01.2`) or in a numeric prerelease identifier (`1.0.0-01`), and anything
        else (`latest`, `1.2.3_1`, `V1`). Leading zeros in minor and patch are tolerated and
        dropped, so Ubuntu's `22.04` and calendar tags like `2024.01.15` stay comparable.
        """
        if len(tag) > _MAX_VERSION_LEN:
            return None
        m = _VERSION_RE.fullmatch(tag)
        if m is None:
            return None
        prerelease: tuple[PrereleaseId, ...] = ()
        if m["pre"] is not None:
            split = _split_prerelease(m["pre"])
            if split is None:
                return None
            prerelease = split
        return cls(
            int(m["major"]),
            int(m["minor"] or 0),
            int(m["patch"] or 0),
            prerelease,
            m["build"] or "",
        )

    @property
    def core(self) -> tuple[int, int, int]:
        """Return (major, minor, patch)."""
        return (self.major, self.minor, self.patch)

    @property
    def is_prerelease(self) -> bool:
        """Tell whether the version has a prerelease part."""
        return bool(self.prerelease)

    def sort_key(self) -> tuple[int, int, int, tuple[int, tuple[tuple[int, int, str], ...]]]:
        """Return a tuple whose natural order is semver precedence."""
        if not self.prerelease:
            pre: tuple[int, tuple[tuple[int, int, str], ...]] = (1, ())
        else:
            pre = (
                0,
                tuple((0, i, "") if isinstance(i, int) else (1, 0, i) for i in self.prerelease),
            )
        return (self.major, self.minor, self.patch, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() >= other.sort_key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(i) for i in self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def _floor(major: int, minor: int, patch: int) -> Version:
    """Return the lowest version with this core (`x.y.z-0`), below all its prereleases."""
    return Version(major, minor, patch, (0,))


_Op = Literal["=", "!=", "<", "<=", ">", ">=", "outside"]


@dataclass(frozen=True)
class _Comparator:
    """One primitive test; `outside` means "not in [version, upper)"."""

    op: _Op
    version: Version
    upper: Version | None = None

    def test(self, v: Version) -> bool:
        """Tell whether `v` passes this comparator (prerelease rule aside)."""
        key, ref = v.sort_key(), self.version.sort_key()
        if self.op == "=":
            return key == ref
        if self.op == "!=":
            return key != ref
        if self.op == "<":
            return key < ref
        if self.op == "<=":
            return key <= ref
        if self.op == ">":
            return key > ref
        if self.op == ">=":
            return key >= ref
        assert self.upper is not None
        return not (ref <= key < self.upper.sort_key())


@dataclass(frozen=True)
class _Group:
    """Comparators that must all hold, and the cores on which prereleases may match."""

    comparators: tuple[_Comparator, ...]
    prerelease_cores: frozenset[tuple[int, int, int]]

    def matches(self, v: Version) -> bool:
        """Tell whether `v` satisfies every comparator and the prerelease rule."""
        if v.prerelease and v.core not in self.prerelease_cores:
            return False
        return all(c.test(v) for c in self.comparators)


@dataclass(frozen=True)
class _Partial:
    """A version as written in a range: `None` parts are missing or wildcards."""

    major: int | None
    minor: int | None
    patch: int | None
    prerelease: tuple[PrereleaseId, ...]

    @property
    def precision(self) -> int:
        """Return how many leading parts are given: 0 for `*`, 3 for a full version."""
        return sum(1 for p in (self.major, self.minor, self.patch) if p is not None)

    @property
    def low(self) -> Version:
        """Return the lowest version the partial stands for (missing parts as 0)."""
        return Version(self.major or 0, self.minor or 0, self.patch or 0, self.prerelease)

    def next_floor(self) -> Version:
        """Return the floor of the first version past this partial (`1.2` -> `1.3.0-0`)."""
        assert self.major is not None
        if self.minor is None:
            return _floor(self.major + 1, 0, 0)
        return _floor(self.major, self.minor + 1, 0)

    def next_release(self) -> Version:
        """Return the first release past this partial (`1.2` -> `1.3.0`)."""
        nxt = self.next_floor()
        return Version(nxt.major, nxt.minor, nxt.patch)


class _RangeSyntaxError(Exception):
    """A problem in one part of a range; SemverRange.parse turns it into ConfigError."""

    def __init__(self, problem: str, part: str) -> None:
        super().__init__(problem, part)
        self.problem = problem
        self.part = part


def _parse_partial(text: str, whole: str) -> _Partial:
    m = _PARTIAL_RE.fullmatch(text) if len(text) <= _MAX_VERSION_LEN else None
    if m is None:
        raise _RangeSyntaxError("not a version", whole)
    parts: list[int | None] = []
    wild = False
    for raw in (m["major"], m["minor"], m["patch"]):
        if raw is None or raw in ("x", "X", "*"):
            wild = True
            parts.append(None)
        elif wild:
            raise _RangeSyntaxError("a number cannot follow a wildcard", whole)
        else:
            parts.append(int(raw))
    prerelease: tuple[PrereleaseId, ...] = ()
    if m["pre"] is not None:
        if any(raw in ("x", "X", "*") for raw in (m["major"], m["minor"], m["patch"])):
            raise _RangeSyntaxError("a wildcard version cannot have a prerelease", whole)
        split = _split_prerelease(m["pre"])
        if split is None:
            raise _RangeSyntaxError("numeric prerelease identifier with a leading zero", whole)
        prerelease = split
        # `1.2-rc.1` is the version 1.2.0-rc.1, as Version.parse reads the tag.
        parts = [p or 0 for p in parts]
    return _Partial(parts[0], parts[1], parts[2], prerelease)


def _desugar(op: str, p: _Partial, whole: str) -> list[_Comparator]:
    """Turn one written comparator into primitive ones (npm's desugaring)."""
    prec = p.precision
    if prec == 0:
        if op in (">", "<", "!="):
            raise _RangeSyntaxError("can never match", whole)
        return []
    low = p.low
    if op == "=":
        if prec == 3:
            return [_Comparator("=", low)]
        return [_Comparator(">=", low), _Comparator("<", p.next_floor())]
    if op == "!=":
        if prec == 3:
            return [_Comparator("!=", low)]
        return [_Comparator("outside", low, p.next_floor())]
    if op == ">":
        return [_Comparator(">", low)] if prec == 3 else [_Comparator(">=", p.next_release())]
    if op == ">=":
        return [_Comparator(">=", low)]
    if op == "<":
        return [_Comparator("<", low if prec == 3 else _floor(*low.core))]
    if op == "<=":
        return [_Comparator("<=", low)] if prec == 3 else [_Comparator("<", p.next_floor())]
    if op == "~":
        major, minor = low.major, low.minor
        upper = _floor(major + 1, 0, 0) if p.minor is None else _floor(major, minor + 1, 0)
        return [_Comparator(">=", low), _Comparator("<", upper)]
    # op == "^": the upper bound bumps the first non-zero part among those given.
    major, minor, patch = low.core
    if major > 0 or prec == 1:
        upper = _floor(major + 1, 0, 0)
    elif minor > 0 or prec == 2:
        upper = _floor(0, minor + 1, 0)
    else:
        upper = _floor(0, 0, patch + 1)
    return [_Comparator(">=", low), _Comparator("<", upper)]


_OP_ALIASES = {"": "=", "=>": ">=", "=<": "<=", "~>": "~"}


def _parse_comparator(token: str, group: _GroupBuilder) -> None:
    compact = "".join(token.split())
    m = _COMPARATOR_RE.fullmatch(compact)
    assert m is not None  # the pattern accepts any string
    op = _OP_ALIASES.get(m["op"] or "", m["op"] or "")
    if not m["version"]:
        raise _RangeSyntaxError("missing version", token)
    partial = _parse_partial(m["version"], token)
    group.note(partial)
    group.comparators.extend(_desugar(op, partial, token))


def _parse_hyphen(left: str, right: str, group: _GroupBuilder) -> None:
    whole = f"{left} - {right}"
    low = _parse_partial(left, whole)
    high = _parse_partial(right, whole)
    group.note(low)
    group.note(high)
    if low.precision:
        group.comparators.append(_Comparator(">=", low.low))
    if high.precision == 3:
        group.comparators.append(_Comparator("<=", high.low))
    elif high.precision:
        group.comparators.append(_Comparator("<", high.next_floor()))


class _GroupBuilder:
    """Collects the comparators of one `||` alternative while it is parsed."""

    def __init__(self) -> None:
        self.comparators: list[_Comparator] = []
        self.cores: set[tuple[int, int, int]] = set()

    def note(self, partial: _Partial) -> None:
        """Remember a written prerelease: it lets prereleases of its core match."""
        if partial.prerelease:
            self.cores.add(partial.low.core)

    def build(self) -> _Group:
        """Return the finished group."""
        return _Group(tuple(self.comparators), frozenset(self.cores))


def _parse_group(alternative: str) -> _Group:
    builder = _GroupBuilder()
    for part in alternative.split(","):
        if not part.strip():
            raise _RangeSyntaxError("empty comparator", alternative.strip() or alternative)
        tokens = _TOKEN_RE.findall(part)
        i = 0
        while i < len(tokens):
            if i + 1 < len(tokens) and tokens[i + 1] == "-":
                if i + 2 >= len(tokens):
                    raise _RangeSyntaxError("hyphen range without an upper bound", part.strip())
                _parse_hyphen(tokens[i], tokens[i + 2], builder)
                i += 3
            elif tokens[i] == "-":
                raise _RangeSyntaxError("hyphen range without a lower bound", part.strip())
            else:
                _parse_comparator(tokens[i], builder)
                i += 1
    return builder.build()


@dataclass(frozen=True)
class SemverRange:
    """A version constraint like Masterminds/semver (used by dregsy/Helm) and npm.

    Comparators separated by spaces or commas must all hold; `||` separates alternatives.
    Operators: `=` (or none), `!=`, `>`, `<`, `>=`, `<=` (also `=>`, `=<`), `~`/`~>` (tilde:
    `~1.2.3` is `>=1.2.3 <1.3.0`, `~1` is `>=1 <2`), `^` (caret: `^1.2.3` is `>=1.2.3
    <2.0.0`, `^0.2.3` is `>=0.2.3 <0.3.0`, `^0.0.3` is `>=0.0.3 <0.0.4`), wildcards
    `x`/`X`/`*` and missing parts (`1.2.x`, `1.*`, `1.2`, `*`), and hyphen ranges with
    spaces around the hyphen (`1.2 - 1.4.5` is `>=1.2.0 <=1.4.5`; a partial upper bound
    covers its whole range: `1.2 - 2.3` is `>=1.2.0 <2.4.0`). A space after an operator is
    allowed (`>= 1.2`). Partial versions desugar as in npm: `>1.2` is `>=1.3.0`, `<=1.2` is
    `<1.3.0`, `!=1.2` excludes every 1.2.x.

    Prerelease rule (npm's, which Masterminds approximates): a prerelease version matches
    only if an alternative it satisfies also mentions a prerelease on the same
    major.minor.patch. So `>=1.2.3-rc.1` matches 1.2.3-rc.2 but not 1.2.4-rc.1, and
    `>=1.0` matches no prerelease, which includes variant tags such as `1.25-alpine`.
    Masterminds v3 is looser (any prerelease in the comparator admits all prereleases).
    """

    text: str
    groups: tuple[_Group, ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> SemverRange:
        """Parse a range; ConfigError quoting the offending part on bad input."""
        if not isinstance(text, str):
            raise ConfigError(f"semver range must be a string, got {text!r}")
        if not text.strip():
            raise ConfigError("empty semver range (use '*' for any release version)")
        groups: list[_Group] = []
        try:
            for alternative in text.split("||"):
                if not alternative.strip():
                    raise _RangeSyntaxError("empty alternative", "||")
                groups.append(_parse_group(alternative))
        except _RangeSyntaxError as exc:
            raise ConfigError(
                f"invalid semver range {text!r}: {exc.problem} in {exc.part!r}"
            ) from None
        return cls(text, tuple(groups))

    def matches(self, v: Version) -> bool:
        """Tell whether a version satisfies the range."""
        return any(g.matches(v) for g in self.groups)

    def __str__(self) -> str:
        return self.text


_CHUNK_RE = re.compile(r"[0-9]+|[^0-9]+")

_NaturalKey = tuple[int, object, tuple[tuple[int, int, str], ...], str]


def _natural_chunk(chunk: str) -> tuple[int, int, str]:
    """Key one run: digits by value (length, then text, so no int() of any size), text as is."""
    if "0" <= chunk[0] <= "9":
        digits = chunk.lstrip("0")
        return (0, len(digits), digits)
    return (1, 0, chunk)


def natural_key(tag: str) -> _NaturalKey:
    """Return a sort key: version tags first by semver order, then others naturally.

    "Naturally" means runs of digits compare as numbers (`a9 < a10`); the tag itself breaks
    the remaining ties (`1.2` vs `v1.2`), so the order is total and deterministic.
    """
    chunks = tuple(_natural_chunk(c) for c in _CHUNK_RE.findall(tag))
    version = Version.parse(tag)
    if version is not None:
        return (0, version.sort_key(), chunks, tag)
    return (1, (), chunks, tag)


def split_listed(tags: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split a registry's tag listing into valid tags and names outside the tag grammar.

    A registry may list anything (`..`, a 200-character name); such a name is skipped by
    the caller, with a warning, and never becomes a reference or a URL.
    """
    valid: list[str] = []
    invalid: list[str] = []
    for tag in tags:
        (valid if _TAG_RE.fullmatch(tag) else invalid).append(tag)
    return valid, invalid


def shown(tag: str, limit: int = 80) -> str:
    """Quote a name a registry gave for a message: repr, cut to `limit` characters."""
    text = repr(tag)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_strings(name: str, value: object) -> tuple[str, ...]:
    """Return `value` as a tuple of strings, or raise ConfigError."""
    if isinstance(value, str):
        raise ConfigError(f"{name} must be a list of strings, not the string {value!r}")
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{name} must contain strings, got {item!r}")
    return items


def _compile(kind: str, patterns: tuple[str, ...]) -> tuple[TagPattern, ...]:
    return tuple(compile_pattern(pattern, kind) for pattern in patterns)


@dataclass(frozen=True)
class TagFilter:
    """Which tags of a repository to copy (see the module docstring for how parts combine).

    `tags` are exact tags, always copied unless excluded. `include`/`exclude` are regexes
    that must match the whole tag, compiled with RE2 (`ocimirror.patterns`: linear time,
    no backreferences or lookaround). `semver` keeps only version tags in the
    range; `latest` keeps the N highest distinct versions (tags that share a version, such
    as `1.2` and `v1.2.0`, count once), prereleases included unless the range or an
    exclude removes them (`semver="*"` keeps releases only). An empty filter selects all.
    """

    tags: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver: str | None = None
    latest: int | None = None
    _include: tuple[TagPattern, ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[TagPattern, ...] = field(init=False, repr=False, compare=False)
    _range: SemverRange | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tags = tuple(dict.fromkeys(_as_strings("tags", self.tags)))
        for tag in tags:
            if not _TAG_RE.fullmatch(tag):
                raise ConfigError(f"invalid tag {tag!r}")
        include = _as_strings("include", self.include)
        exclude = _as_strings("exclude", self.exclude)
        if self.latest is not None and (
            type(self.latest) is not int or self.latest < 1  # bool is not a count
        ):
            raise ConfigError(f"latest must be a positive integer, got {self.latest!r}")
        rng = None if self.semver is None else SemverRange.parse(self.semver)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "include", include)
        object.__setattr__(self, "exclude", exclude)
        object.__setattr__(self, "_include", _compile("include", include))
        object.__setattr__(self, "_exclude", _compile("exclude", exclude))
        object.__setattr__(self, "_range", rng)

    @property
    def needs_listing(self) -> bool:
        """Tell whether the repository's tag list is needed (False: only exact tags)."""
        return (
            not self.tags
            or bool(self.include)
            or self.semver is not None
            or self.latest is not None
        )

    @property
    def _by_version(self) -> bool:
        return self.semver is not None or self.latest is not None

    def _excluded(self, tag: str) -> bool:
        return any(p.fullmatch(tag) for p in self._exclude)

    def _included(self, tag: str) -> bool:
        return not self._include or any(p.fullmatch(tag) for p in self._include)

    def select(self, tags: Iterable[str]) -> list[str]:
        """Return the chosen tags from a listing, without duplicates.

        When `semver` or `latest` is set: newest version first (tags of equal version in
        natural order), then non-version exact tags such as `latest` in natural order;
        otherwise ordered by `natural_key`. `tags` may be empty when `needs_listing` is
        False: the exact tags do not have to be listed.
        """
        chosen = {t for t in self.tags if not self._excluded(t)}
        if self.needs_listing:
            # Fallback indexes and cosign tags travel with their image, never on their own.
            candidates = [
                t
                for t in dict.fromkeys(tags)
                if not is_referrer_tag(t) and self._included(t) and not self._excluded(t)
            ]
            if self._by_version:
                chosen.update(self._pick_versions(candidates))
            else:
                chosen.update(candidates)
        ordered = sorted(chosen, key=natural_key)
        if self._by_version:
            versions = [(v, t) for t in ordered if (v := Version.parse(t)) is not None]
            versions.sort(key=lambda vt: vt[0].sort_key(), reverse=True)  # stable
            others = [t for t in ordered if Version.parse(t) is None]
            return [t for _, t in versions] + others
        return ordered

    def _pick_versions(self, candidates: list[str]) -> list[str]:
        """Keep version tags in the range, then those of the `latest` highest versions."""
        versions: list[tuple[Version, str]] = []
        for tag in candidates:
            v = Version.parse(tag)
            if v is not None and (self._range is None or self._range.matches(v)):
                versions.append((v, tag))
        if self.latest is not None:
            keep = set(sorted({v for v, _ in versions}, reverse=True)[: self.latest])
            versions = [(v, t) for v, t in versions if v in keep]
        return [t for _, t in versions]
