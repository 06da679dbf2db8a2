"""Tests of tag selection: Version, SemverRange, TagFilter and natural ordering."""

from __future__ import annotations

import functools
import itertools
import random
import re
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocimirror.errors import ConfigError
from ocimirror.transfer.tags import SemverRange, TagFilter, Version, natural_key

# --------------------------------------------------------------------------- Version.parse

V = Version


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("1.2.3", V(1, 2, 3)),
        ("v1.2.3", V(1, 2, 3)),
        ("0.0.0", V(0, 0, 0)),
        ("1.2", V(1, 2, 0)),
        ("v1.2", V(1, 2, 0)),
        ("1", V(1, 0, 0)),
        ("v2", V(2, 0, 0)),
        ("10.20.30", V(10, 20, 30)),
        ("1.2.3-rc.1", V(1, 2, 3, ("rc", 1))),
        ("1.0.0-alpha.beta", V(1, 0, 0, ("alpha", "beta"))),
        ("1.0.0-0.3.7", V(1, 0, 0, (0, 3, 7))),
        ("1.0.0-x.7.z.92", V(1, 0, 0, ("x", 7, "z", 92))),
        ("1.0.0-0A.is.legal", V(1, 0, 0, ("0A", "is", "legal"))),
        ("1.0.0--", V(1, 0, 0, ("-",))),
        ("1.0.0-x-y-z.--", V(1, 0, 0, ("x-y-z", "--"))),
        ("1.2.3+build.5", V(1, 2, 3, (), "build.5")),
        ("1.0.0-beta+exp.sha.5114f85", V(1, 0, 0, ("beta",), "exp.sha.5114f85")),
        ("1.0.0+0.build.1-rc.10000aaa-kk-0.1", V(1, 0, 0, (), "0.build.1-rc.10000aaa-kk-0.1")),
        ("1.0.0+001", V(1, 0, 0, (), "001")),  # leading zeros are fine in build metadata
        # variant suffixes are prereleases, as in Masterminds/semver
        ("1.2.3-alpine", V(1, 2, 3, ("alpine",))),
        ("1.25-alpine", V(1, 25, 0, ("alpine",))),
        ("3.18-alpine3.18", V(3, 18, 0, ("alpine3", 18))),
        ("2-bookworm", V(2, 0, 0, ("bookworm",))),
        # leading zeros tolerated in minor/patch (Ubuntu, calendar versions)
        ("22.04", V(22, 4, 0)),
        ("2024.01.15", V(2024, 1, 15)),
        ("20240115", V(20240115, 0, 0)),
        ("99999999999999999999.0.0", V(99999999999999999999, 0, 0)),
    ],
)
def test_version_parse_valid(tag: str, expected: Version) -> None:
    v = Version.parse(tag)
    assert v is not None
    assert (v.major, v.minor, v.patch, v.prerelease, v.build) == (
        expected.major,
        expected.minor,
        expected.patch,
        expected.prerelease,
        expected.build,
    )


@pytest.mark.parametrize(
    "tag",
    [
        "",
        "latest",
        "alpine",
        "stable-slim",
        "v",
        "V1.2.3",  # only a lowercase v prefix
        "vv1",
        "1.2.3.4",  # 4-part versions are not semver
        "v1.2.3.4-rc",
        "01.2.3",  # leading zero in the major
        "00",
        "007",
        "1.2.3-01",  # leading zero in a numeric prerelease identifier
        "1.2.3-rc.01",
        "1.2.3-",
        "1.2.3+",
        "1.2.3-+b",
        "1.2.3-rc..1",
        "1.2.3-rc.",
        "1.2.3+b..1",
        "1.2.3+b+c",
        "1.2.3_1",
        "1.2.3~rc1",
        " 1.2.3",
        "1.2.3 ",
        "1..2",
        ".1.2",
        "1.2.",
        "-1.2",
        "1.2.3-rc.1+",
        "\u0661.\u0662.\u0663",  # Arabic-Indic digits are not ASCII digits
        "sha-5114f85",
        "1.x",
        "*",
    ],
)
def test_version_parse_invalid(tag: str) -> None:
    assert Version.parse(tag) is None


def test_version_parse_refuses_huge_numbers() -> None:
    assert Version.parse("9" * 5000) is None
    assert Version.parse("1." + "9" * 250) is not None


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("v1.2", "1.2.0"),
        ("1.2.3-rc.1+b.2", "1.2.3-rc.1+b.2"),
        ("22.04", "22.4.0"),
        ("1-alpine", "1.0.0-alpine"),
    ],
)
def test_version_str_is_canonical(tag: str, text: str) -> None:
    assert str(Version.parse(tag)) == text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 0), "major"),
        ((1, True, 0), "minor"),
        ((1, 0, 0, ("01x y",)), "prerelease"),
        ((1, 0, 0, ("12",)), "prerelease"),  # digits must be given as an int
        ((1, 0, 0, (-1,)), "prerelease"),
        ((1, 0, 0, (), "a..b"), "build"),
    ],
)
def test_version_constructor_validates(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Version(*args)  # type: ignore[arg-type]


def test_version_core_and_is_prerelease() -> None:
    v = V(1, 2, 3, ("rc", 1))
    assert v.core == (1, 2, 3)
    assert v.is_prerelease
    assert not V(1, 2, 3).is_prerelease


# --------------------------------------------------------------------------- precedence

SPEC_CHAIN = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
    "2.10.0",
    "10.0.0",
]


def _v(text: str) -> Version:
    v = Version.parse(text)
    assert v is not None, text
    return v


def test_spec_precedence_chain() -> None:
    chain = [_v(t) for t in SPEC_CHAIN]
    for i, j in itertools.combinations(range(len(chain)), 2):
        assert chain[i] < chain[j], (SPEC_CHAIN[i], SPEC_CHAIN[j])
        assert chain[j] > chain[i]
        assert chain[i] <= chain[j]
        assert chain[j] >= chain[i]
        assert chain[i] != chain[j]
    shuffled = chain[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == chain


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("1.0.0-1", "1.0.0-a"),  # numeric identifiers sort below alphanumeric ones
        ("1.0.0-2", "1.0.0-10"),  # numerically, not lexically
        ("1.0.0-Z", "1.0.0-a"),  # ASCII order
        ("1.0.0-a", "1.0.0-a.0"),  # a longer list wins when the shorter prefixes it
        ("1.0.0-rc.1", "1.0.0"),
        ("0.9.9", "1.0.0-0"),
        ("1.9", "1.10"),
        ("22.04", "22.10"),
    ],
)
def test_precedence_pairs(low: str, high: str) -> None:
    assert _v(low) < _v(high)
    assert not _v(high) < _v(low)


def test_build_metadata_is_ignored_by_order_equality_and_hash() -> None:
    a, b = _v("1.0.0+a"), _v("1.0.0+b")
    assert a == b
    assert hash(a) == hash(b)
    assert not a < b
    assert not b < a
    assert a <= b
    assert a >= b
    assert str(a) != str(b)
    assert _v("v1.2") == _v("1.2.0")


def test_version_does_not_compare_with_other_types() -> None:
    other: object = "1.0.0"
    assert V(1, 0, 0) != other
    with pytest.raises(TypeError):
        _ = V(1, 0, 0) < other


# --------------------------------------------------------------------------- SemverRange


def _match(rng: str, version: str) -> bool:
    return SemverRange.parse(rng).matches(_v(version))


@pytest.mark.parametrize(
    ("rng", "version", "expected"),
    [
        # exact and comparison operators
        ("1.2.3", "1.2.3", True),
        ("=1.2.3", "1.2.3", True),
        ("=1.2.3", "1.2.3+build", True),
        ("v1.2.3", "1.2.3", True),
        ("=1.2.3", "1.2.4", False),
        ("!=1.2.3", "1.2.3", False),
        ("!=1.2.3", "1.2.4", True),
        (">1.2.3", "1.2.3", False),
        (">1.2.3", "1.2.4", True),
        ("<1.2.3", "1.2.2", True),
        ("<1.2.3", "1.2.3", False),
        (">=1.2.3", "1.2.3", True),
        (">=1.2.3", "1.2.2", False),
        ("<=1.2.3", "1.2.3", True),
        ("<=1.2.3", "1.2.4", False),
        ("=>1.2.3", "1.2.3", True),
        ("=<1.2.3", "1.2.3", True),
        # partial versions behave as X-ranges
        ("1.2", "1.2.0", True),
        ("1.2", "1.2.99", True),
        ("1.2", "1.3.0", False),
        ("1", "1.99.99", True),
        ("1", "2.0.0", False),
        (">1.2", "1.2.9", False),
        (">1.2", "1.3.0", True),
        (">1", "1.9.9", False),
        (">1", "2.0.0", True),
        ("<1.2", "1.1.99", True),
        ("<1.2", "1.2.0", False),
        ("<=1.2", "1.2.99", True),
        ("<=1.2", "1.3.0", False),
        (">=1.2", "1.2.0", True),
        (">=1.2", "1.1.9", False),
        ("!=1.2", "1.2.5", False),
        ("!=1.2", "1.3.0", True),
        ("!=1.2", "1.1.9", True),
        # wildcards
        ("*", "0.0.0", True),
        ("*", "999.0.0", True),
        ("x", "1.0.0", True),
        ("1.x", "1.5.0", True),
        ("1.X", "2.0.0", False),
        ("1.*", "1.0.0", True),
        ("1.2.x", "1.2.7", True),
        ("1.2.*", "1.3.0", False),
        ("1.x.x", "1.9.9", True),
        (">=1.2.x", "1.2.0", True),
        ("<=2.x", "2.99.0", True),
        ("<=2.x", "3.0.0", False),
        (">=*", "0.1.0", True),
        # tilde
        ("~1.2.3", "1.2.3", True),
        ("~1.2.3", "1.2.99", True),
        ("~1.2.3", "1.3.0", False),
        ("~1.2.3", "1.2.2", False),
        ("~1.2", "1.2.0", True),
        ("~1.2", "1.3.0", False),
        ("~1", "1.0.0", True),
        ("~1", "1.99.0", True),
        ("~1", "2.0.0", False),
        ("~1.x", "1.5.0", True),
        ("~0.2.3", "0.2.9", True),
        ("~0.2.3", "0.3.0", False),
        ("~>1.2.3", "1.2.5", True),
        ("~>1.2.3", "1.3.0", False),
        ("~ 1.2.3", "1.2.5", True),
        # caret
        ("^1.2.3", "1.2.3", True),
        ("^1.2.3", "1.99.0", True),
        ("^1.2.3", "2.0.0", False),
        ("^1.2.3", "1.2.2", False),
        ("^0.2.3", "0.2.3", True),
        ("^0.2.3", "0.2.99", True),
        ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.3", True),
        ("^0.0.3", "0.0.4", False),
        ("^0.0.3", "0.0.2", False),
        ("^1.2", "1.9.0", True),
        ("^1.2", "2.0.0", False),
        ("^1.2.x", "1.2.0", True),
        ("^1.2.x", "1.9.0", True),
        ("^1", "1.9.9", True),
        ("^1", "2.0.0", False),
        ("^0", "0.9.9", True),
        ("^0", "1.0.0", False),
        ("^0.0", "0.0.9", True),
        ("^0.0", "0.1.0", False),
        ("^0.0.x", "0.0.9", True),
        ("^0.x", "0.9.0", True),
        ("^0.x", "1.0.0", False),
        ("^0.2", "0.2.9", True),
        ("^0.2", "0.3.0", False),
        ("^*", "5.0.0", True),
        # hyphen ranges
        ("1.2 - 1.4.5", "1.2.0", True),
        ("1.2 - 1.4.5", "1.4.5", True),
        ("1.2 - 1.4.5", "1.4.6", False),
        ("1.2 - 1.4.5", "1.1.9", False),
        ("1.2.3 - 2.3", "2.3.99", True),
        ("1.2.3 - 2.3", "2.4.0", False),
        ("1.2.3 - 2", "2.99.0", True),
        ("1.2.3 - 2", "3.0.0", False),
        ("1.x - 2.x", "2.9.0", True),
        ("* - 2", "0.0.1", True),
        ("1.2 - *", "9.0.0", True),
        ("v1.2.3 - v1.2.5", "1.2.4", True),
        # AND (spaces, commas) and OR
        (">=1.2 <2", "1.5.0", True),
        (">=1.2 <2", "2.0.0", False),
        (">=1.2, <2", "1.9.9", True),
        (">= 1.2, < 3.0.0 || >= 4.2.3", "3.5.0", False),
        (">= 1.2, < 3.0.0 || >= 4.2.3", "4.2.3", True),
        (">= 1.2, < 3.0.0 || >= 4.2.3", "2.0.0", True),
        ("1.x || 3.x", "2.0.0", False),
        ("1.x || 3.x", "3.1.0", True),
        ("1.2.x !=1.2.5", "1.2.5", False),
        ("1.2.x !=1.2.5", "1.2.6", True),
        ("1.2 - 1.4, !=1.3", "1.3.2", False),
        ("1.2 - 1.4, !=1.3", "1.4.2", True),
        ("1.2.3 || 2.0.0 - 2.1.0 || ^4", "2.0.5", True),
        ("1.2.3 || 2.0.0 - 2.1.0 || ^4", "4.9.0", True),
        ("1.2.3 || 2.0.0 - 2.1.0 || ^4", "3.0.0", False),
        ("  >=1.0   <1.1  ", "1.0.5", True),
        # partial versions with a prerelease are full versions (1.2-rc.1 is 1.2.0-rc.1)
        ("1.2-rc.1", "1.2.0-rc.1", True),
    ],
)
def test_range_matches(rng: str, version: str, expected: bool) -> None:
    assert _match(rng, version) is expected


@pytest.mark.parametrize(
    ("rng", "version", "expected"),
    [
        # a prerelease only matches a range mentioning a prerelease on the same x.y.z
        (">=1.0.0", "1.2.0-rc.1", False),
        ("*", "1.0.0-rc.1", False),
        ("^1.2.3", "1.3.0-beta", False),
        ("<2.0.0", "2.0.0-rc.1", False),
        ("1.x", "2.0.0-rc.1", False),
        (">=1.25", "1.26-alpine", False),  # variant tags are prereleases too
        (">=1.2.3-rc.1", "1.2.3-rc.1", True),
        (">=1.2.3-rc.1", "1.2.3-rc.2", True),
        (">=1.2.3-rc.1", "1.2.3-beta", False),  # beta < rc
        (">=1.2.3-rc.1", "1.2.3", True),
        (">=1.2.3-rc.1", "1.2.4", True),
        (">=1.2.3-rc.1", "1.2.4-rc.1", False),  # other x.y.z
        ("^1.2.3-beta.2", "1.2.3-beta.4", True),
        ("^1.2.3-beta.2", "1.2.4-beta.2", False),
        ("~1.2.3-beta.2", "1.2.3-beta.3", True),
        ("1.2.3-rc.1", "1.2.3-rc.1+b", True),
        ("1.2.3-rc.1", "1.2.3-rc.2", False),
        ("<1.3.0-rc.1", "1.3.0-beta", True),
        ("<1.3.0-rc.1", "1.3.0-rc.1", False),
        ("1.0.0-rc.1 - 1.0.0", "1.0.0-rc.5", True),
        # the allowance is per `||` alternative
        (">=1.2.3-rc.1 <1.2.3 || >=2", "1.2.3-rc.9", True),
        (">=1.2.3-rc.1 <1.2.3 || >=2", "2.0.0-rc.1", False),
        (">=1.0.0 || 2.0.0-rc.1", "2.0.0-rc.1", True),
        ("1.2.3-0 - 1.2.3-rc.5 !=1.2.3-beta", "1.2.3-beta", False),
        ("1.2.3-0 - 1.2.3-rc.5 !=1.2.3-beta", "1.2.3-alpha", True),
    ],
)
def test_range_prerelease_rule(rng: str, version: str, expected: bool) -> None:
    assert _match(rng, version) is expected


_GRID = [
    *(f"{a}.{b}.{c}" for a in range(4) for b in range(4) for c in range(4)),
    "1.2.3-rc.1",
    "1.2.3-beta.2",
    "1.2.3-beta.4",
    "1.3.0-rc.1",
    "2.0.0-rc.1",
    "0.0.3-alpha",
    "10.0.0",
]


@pytest.mark.parametrize(
    ("sugar", "plain"),
    [
        ("~1.2.3", ">=1.2.3 <1.3.0"),
        ("~1.2", ">=1.2.0 <1.3.0"),
        ("~1", ">=1.0.0 <2.0.0"),
        ("~0", ">=0.0.0 <1.0.0"),
        ("^1.2.3", ">=1.2.3 <2.0.0"),
        ("^0.2.3", ">=0.2.3 <0.3.0"),
        ("^0.0.3", ">=0.0.3 <0.0.4"),
        ("^1.2.x", ">=1.2.0 <2.0.0"),
        ("^0.0", ">=0.0.0 <0.1.0"),
        ("^0", ">=0.0.0 <1.0.0"),
        ("1.2.x", ">=1.2.0 <1.3.0"),
        ("1.*", ">=1.0.0 <2.0.0"),
        ("*", ">=0.0.0"),
        ("1.2 - 1.4.5", ">=1.2.0 <=1.4.5"),
        ("1.2.3 - 2.3", ">=1.2.3 <2.4.0"),
        ("!=1.2", "<1.2.0 || >=1.3.0"),
        (">1.2", ">=1.3.0"),
        ("<=1.2", "<1.3.0"),
        ("~1.2.3-beta.2", ">=1.2.3-beta.2 <1.3.0"),
        ("^1.2.3-beta.2", ">=1.2.3-beta.2 <2.0.0"),
        (">=1 <2, !=1.1.1", ">=1.0.0, <2.0.0, !=1.1.1"),
    ],
)
def test_range_desugaring_is_equivalent(sugar: str, plain: str) -> None:
    a, b = SemverRange.parse(sugar), SemverRange.parse(plain)
    for text in _GRID:
        assert a.matches(_v(text)) == b.matches(_v(text)), text


@pytest.mark.parametrize(
    ("rng", "problem", "part"),
    [
        ("1.2.3.4", "not a version", "1.2.3.4"),
        ("latest", "not a version", "latest"),
        (">=1.2 <foo", "not a version", "<foo"),
        (">=01.2", "not a version", ">=01.2"),
        ("1.2.3-01", "leading zero", "1.2.3-01"),
        ("1.x.3", "cannot follow a wildcard", "1.x.3"),
        ("*.1", "cannot follow a wildcard", "*.1"),
        ("1.x-rc.1", "wildcard version cannot have a prerelease", "1.x-rc.1"),
        (">*", "can never match", ">*"),
        ("<x", "can never match", "<x"),
        ("!=*", "can never match", "!=*"),
        (">=", "missing version", ">="),
        ("> =1", "missing version", ">"),
        ("1.2 -", "without an upper bound", "1.2 -"),
        ("- 1.2", "without a lower bound", "- 1.2"),
        (">=1.2 - 2", "not a version", ">=1.2 - 2"),
        ("1.2 - <2", "not a version", "1.2 - <2"),
        (">=1 ||", "empty alternative", "||"),
        ("|| >=1", "empty alternative", "||"),
        ("1 | 2", "not a version", "|"),
        (">=1,,<2", "empty comparator", ">=1,,<2"),
        ("9" * 300, "not a version", "9" * 300),
        ("==1.2.3", "not a version", "==1.2.3"),
    ],
)
def test_range_errors_quote_the_offending_part(rng: str, problem: str, part: str) -> None:
    with pytest.raises(ConfigError) as info:
        SemverRange.parse(rng)
    message = str(info.value)
    assert message.startswith(f"invalid semver range {rng!r}: ")
    assert problem in message
    assert repr(part) in message


@pytest.mark.parametrize("rng", ["", "   "])
def test_range_empty_is_an_error(rng: str) -> None:
    with pytest.raises(ConfigError, match="empty semver range"):
        SemverRange.parse(rng)


def test_range_str_and_equality() -> None:
    assert str(SemverRange.parse(">=1 <2")) == ">=1 <2"
    assert SemverRange.parse("^1") == SemverRange.parse("^1")


# --------------------------------------------------------------------------- natural order


def test_natural_key_orders_versions_then_names() -> None:
    tags = ["latest", "a10", "1.10", "v1.9", "1.9", "a9", "1.10-rc.1", "b", "1.2.3_1", "22.04"]
    assert sorted(tags, key=natural_key) == [
        "1.9",
        "v1.9",
        "1.10-rc.1",
        "1.10",
        "22.04",
        "1.2.3_1",
        "a9",
        "a10",
        "b",
        "latest",
    ]


def test_natural_key_copes_with_huge_digit_runs() -> None:
    huge = "9" * 5000
    assert sorted([huge, "a", "8" * 5000, "1"], key=natural_key) == ["1", "8" * 5000, huge, "a"]
    assert sorted(["a01", "a1", "a001"], key=natural_key) == ["a001", "a01", "a1"]


# --------------------------------------------------------------------------- TagFilter

LISTING = [
    "latest",
    "stable",
    "alpine",
    "1.19",
    "1.19.3",
    "1.20",
    "1.20.1",
    "v1.20.1",
    "1.20.1-alpine",
    "1.21.0-rc.1",
    "1.21.0",
    "2.0.0-beta.1",
    "2.0.0",
    "nightly-20240101",
]


def test_empty_filter_selects_all_in_natural_order() -> None:
    f = TagFilter()
    assert f.needs_listing
    assert f.select(LISTING) == sorted(LISTING, key=natural_key)


def test_select_removes_duplicates() -> None:
    assert TagFilter().select(["b", "a", "b", "a"]) == ["a", "b"]


def test_include_and_exclude() -> None:
    f = TagFilter(include=(r"1\.20.*", r"stable"), exclude=(r".*-alpine", r"v.*"))
    assert f.select(LISTING) == ["1.20", "1.20.1", "stable"]


def test_regexes_must_match_the_whole_tag() -> None:
    assert TagFilter(include=("1.2",)).select(["1.2", "1.20", "11.2"]) == ["1.2"]
    assert TagFilter(exclude=("alpine",)).select(["alpine", "1-alpine"]) == ["1-alpine"]


def test_exclude_only() -> None:
    f = TagFilter(exclude=(r"nightly-.*", ".*-.*"))
    assert "nightly-20240101" not in f.select(LISTING)
    assert "latest" in f.select(LISTING)
    assert "1.21.0-rc.1" not in f.select(LISTING)


def test_semver_drops_non_versions_and_orders_descending() -> None:
    f = TagFilter(semver=">=1.20")
    assert f.select(LISTING) == ["2.0.0", "1.21.0", "1.20.1", "v1.20.1", "1.20"]


def test_semver_with_prerelease_opt_in() -> None:
    f = TagFilter(semver=">=2.0.0-0")
    assert f.select(LISTING) == ["2.0.0", "2.0.0-beta.1"]


def test_latest_counts_distinct_versions_and_includes_prereleases() -> None:
    assert TagFilter(latest=2).select(LISTING) == ["2.0.0", "2.0.0-beta.1"]
    assert TagFilter(latest=5).select(LISTING) == [
        "2.0.0",
        "2.0.0-beta.1",
        "1.21.0",
        "1.21.0-rc.1",
        "1.20.1",
        "v1.20.1",
    ]


def test_semver_and_latest() -> None:
    f = TagFilter(semver="*", latest=3)  # releases only, newest three
    assert f.select(LISTING) == ["2.0.0", "1.21.0", "1.20.1", "v1.20.1"]
    f = TagFilter(semver="<2", latest=2, exclude=("v.*",))
    assert f.select(LISTING) == ["1.21.0", "1.20.1"]


def test_exclude_applies_before_latest() -> None:
    f = TagFilter(latest=1, exclude=(r"2\..*",))
    assert f.select(LISTING) == ["1.21.0"]


def test_include_and_latest() -> None:
    f = TagFilter(include=(r"1\.19.*",), latest=1)
    assert f.select(LISTING) == ["1.19.3"]


def test_latest_larger_than_available() -> None:
    assert TagFilter(latest=100).select(["1", "2", "x"]) == ["2", "1"]


def test_exact_tags_only() -> None:
    f = TagFilter(tags=("stable", "1.19", "latest"))
    assert not f.needs_listing
    assert f.select(LISTING) == ["1.19", "latest", "stable"]
    # the listing may be skipped: exact tags need not be listed
    assert f.select([]) == ["1.19", "latest", "stable"]


def test_exact_tags_are_subject_to_exclude() -> None:
    f = TagFilter(tags=("latest", "1.19-alpine"), exclude=(".*-alpine",))
    assert not f.needs_listing
    assert f.select([]) == ["latest"]


def test_exact_tags_plus_semver_is_a_union() -> None:
    f = TagFilter(tags=("latest", "1.0"), semver="^1.20", latest=1)
    assert f.needs_listing
    assert f.select(LISTING) == ["1.21.0", "1.0", "latest"]


def test_exact_tags_plus_include_is_a_union() -> None:
    f = TagFilter(tags=("latest",), include=("1.19.*",))
    assert f.select(LISTING) == ["1.19", "1.19.3", "latest"]


def test_exact_tags_are_deduplicated() -> None:
    f = TagFilter(tags=("a", "b", "a"))
    assert f.tags == ("a", "b")
    assert f.select(["a"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "needs"),
    [
        ({}, True),
        ({"tags": ("a",)}, False),
        ({"tags": ("a",), "exclude": ("b",)}, False),
        ({"tags": ("a",), "include": ("b",)}, True),
        ({"tags": ("a",), "semver": "*"}, True),
        ({"tags": ("a",), "latest": 1}, True),
        ({"exclude": ("b",)}, True),
        ({"include": ("b",)}, True),
        ({"semver": "^1"}, True),
        ({"latest": 3}, True),
    ],
)
def test_needs_listing(kwargs: dict[str, object], needs: bool) -> None:
    assert TagFilter(**kwargs).needs_listing is needs  # type: ignore[arg-type]


def test_lists_are_accepted_and_stored_as_tuples() -> None:
    f = TagFilter(tags=["a"], include=["b.*"], exclude=["c"])  # type: ignore[arg-type]
    assert (f.tags, f.include, f.exclude) == (("a",), ("b.*",), ("c",))
    assert hash(f) == hash(TagFilter(tags=("a",), include=("b.*",), exclude=("c",)))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"include": ("v(1",)}, r"invalid include regex 'v\(1': missing \), unterminated"),
        ({"exclude": ("[a-",)}, r"invalid exclude regex '\[a-': unterminated character set"),
        ({"include": ("",)}, "empty include regex"),
        ({"exclude": ("",)}, "empty exclude regex"),
        ({"latest": 0}, "latest must be a positive integer, got 0"),
        ({"latest": -3}, "latest must be a positive integer, got -3"),
        ({"latest": True}, "latest must be a positive integer, got True"),
        ({"latest": "5"}, "latest must be a positive integer, got '5'"),
        ({"semver": ">=1.2.3.4"}, r"invalid semver range '>=1\.2\.3\.4'"),
        ({"semver": ""}, "empty semver range"),
        ({"tags": ("bad tag",)}, "invalid tag 'bad tag'"),
        ({"tags": (".hidden",)}, "invalid tag '.hidden'"),
        ({"tags": ("x" * 129,)}, "invalid tag"),
        ({"tags": "latest"}, "tags must be a list of strings, not the string 'latest'"),
        ({"include": "v.*"}, "include must be a list of strings"),
        ({"exclude": (1,)}, "exclude must contain strings, got 1"),
        ({"tags": 5}, "tags must be a list of strings, got 5"),
    ],
)
def test_filter_errors(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        TagFilter(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ReDoS


def test_nested_quantifier_pattern_matches_in_linear_time() -> None:
    """`(a+)+` against 40 a's and a b: Python's re needs ~2^40 steps; RE2 answers at once.

    The thread join is only a hang guard (a backtracking engine never returns); the
    assertions are on the answers.
    """
    hostile = "a" * 40 + "b"
    results: list[list[str]] = []

    def select() -> None:
        include = TagFilter(include=("(a+)+",))
        exclude = TagFilter(exclude=("(a|aa)+c",))
        results.append(include.select([hostile, "aaaa"]))
        results.append(exclude.select([hostile, "aaac"]))

    worker = threading.Thread(target=select, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "tag pattern matching backtracked"
    assert results == [["aaaa"], [hostile]]


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"(a)\1", "invalid escape sequence"),
        (r"v(?=1)", "invalid perl operator"),
        (r"(?<!x)y", "invalid perl operator"),
    ],
)
def test_backreference_and_lookaround_are_refused_by_name(pattern: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TagFilter(include=(pattern,))
    message = str(caught.value)
    assert message.startswith(f"unsupported include regex {pattern!r}: {problem}")
    assert message.endswith("(tag patterns use RE2: no backreferences or lookaround)")


def test_overlong_pattern_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"exclude regex 'x{40}'… is too long \(5000 char"):
        TagFilter(exclude=("x" * 5000,))


# --------------------------------------------------------------------------- properties

_idents = st.one_of(
    st.integers(0, 12),
    st.sampled_from(["alpha", "beta", "rc", "A", "Z", "a", "x-y", "0a", "-", "alpha1"]),
)
versions = st.builds(
    Version,
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(_idents, max_size=3).map(tuple),
    st.sampled_from(["", "b1", "sha.5114f85"]),
)


def _reference_compare(a: str, b: str) -> int:
    """Compare two canonical version strings by the rules of semver.org, section 11."""

    def split(text: str) -> tuple[list[int], list[str]]:
        core, _, pre = text.split("+")[0].partition("-")
        return [int(p) for p in core.split(".")], (pre.split(".") if pre else [])

    (ca, pa), (cb, pb) = split(a), split(b)
    if ca != cb:
        return -1 if ca < cb else 1
    if not pa or not pb:
        return (not pa) - (not pb)  # a release is above its prereleases
    for x, y in zip(pa, pb, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(pa) > len(pb)) - (len(pa) < len(pb))


@given(versions, versions)
def test_order_agrees_with_the_spec(a: Version, b: Version) -> None:
    expected = _reference_compare(str(a), str(b))
    assert (a < b) == (expected < 0)
    assert (a > b) == (expected > 0)
    assert (a == b) == (expected == 0)
    assert (a <= b) == (expected <= 0)
    assert (a >= b) == (expected >= 0)
    assert sum([a < b, a == b, a > b]) == 1  # trichotomy
    if a == b:
        assert hash(a) == hash(b)


@given(versions, versions, versions)
def test_order_is_transitive(a: Version, b: Version, c: Version) -> None:
    if a <= b and b <= c:
        assert a <= c
    if a < b and b < c:
        assert a < c


@given(st.lists(versions, max_size=12))
def test_sorting_matches_the_reference_comparator(vs: list[Version]) -> None:
    ours = sorted(vs)
    ref = sorted(vs, key=functools.cmp_to_key(lambda x, y: _reference_compare(str(x), str(y))))
    assert [str(v) for v in ours] == [str(v) for v in ref]
    assert all(x <= y for x, y in itertools.pairwise(ours))


@given(versions, st.sampled_from(["", "v"]))
def test_parse_round_trips(v: Version, prefix: str) -> None:
    parsed = Version.parse(prefix + str(v))
    assert parsed == v
    assert parsed is not None
    assert str(parsed) == str(v)


def _caret_next(x: int, y: int, z: int) -> tuple[int, int, int]:
    if x > 0:
        return (x + 1, 0, 0)
    if y > 0:
        return (0, y + 1, 0)
    return (0, 0, z + 1)


@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), versions)
def test_caret_is_the_documented_interval(x: int, y: int, z: int, v: Version) -> None:
    nxt = _caret_next(x, y, z)
    caret = SemverRange.parse(f"^{x}.{y}.{z}")
    plain = SemverRange.parse(">={}.{}.{} <{}.{}.{}".format(x, y, z, *nxt))
    expected = not v.prerelease and (x, y, z) <= v.core < nxt
    assert caret.matches(v) == expected
    assert plain.matches(v) == expected


@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), versions)
def test_tilde_is_the_documented_interval(x: int, y: int, z: int, v: Version) -> None:
    expected = not v.prerelease and (x, y, z) <= v.core < (x, y + 1, 0)
    assert SemverRange.parse(f"~{x}.{y}.{z}").matches(v) == expected


_tag_names = st.one_of(
    st.builds(lambda v, p: p + str(v).split("+")[0], versions, st.sampled_from(["", "v"])),
    st.sampled_from(["latest", "stable", "alpine", "1.2-alpine", "22.04", "edge", "1.2.3_1"]),
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True),
)
filters = st.builds(
    TagFilter,
    tags=st.lists(st.sampled_from(["latest", "1.0.0", "v2", "edge", "9.9"]), max_size=3).map(tuple),
    include=st.sampled_from([(), (r"v?1\..*",), (r".*",), ("latest", "[a-z]+")]),
    exclude=st.sampled_from([(), (".*-.*",), ("latest",)]),
    semver=st.sampled_from([None, "*", ">=1", "^0.2 || ~3.1", ">=1.0.0-alpha <2"]),
    latest=st.sampled_from([None, 1, 2, 5]),
)


@given(filters, st.lists(_tag_names, max_size=15), st.randoms(use_true_random=False))
def test_select_is_a_deterministic_subset(
    f: TagFilter, tags: list[str], rnd: random.Random
) -> None:
    chosen = f.select(tags)
    assert len(chosen) == len(set(chosen))
    assert set(chosen) <= set(tags) | set(f.tags)
    if not f.tags:
        assert set(chosen) <= set(tags)
    shuffled = tags + tags
    rnd.shuffle(shuffled)
    assert f.select(shuffled) == chosen
    assert not any(re.fullmatch(p, t) for p in f.exclude for t in chosen)
    if f.latest is not None:
        listed = set(chosen) - set(f.tags)
        distinct = {Version.parse(t) for t in listed}
        assert None not in distinct
        assert len(distinct) <= f.latest
