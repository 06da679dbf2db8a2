"""Platforms and tag filters are checked in one place (transfer/options.py) for every face."""

from __future__ import annotations

import pytest

from ocimirror.errors import ConfigError
from ocimirror.settings.config import Mirror
from ocimirror.transfer.options import CLI_NAMES, parse_platform, parse_platforms, tag_filter


@pytest.mark.parametrize("bad", ["linux", "linux/", "/amd64", "linux/arm/v7/x", ""])
def test_a_bad_platform_is_refused_naming_the_value_and_the_option(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_platform(bad, name="--platform")
    assert str(err.value) == f"invalid --platform {bad.strip()!r}: expected os/arch[/variant]"


def test_platforms_keep_their_order_and_globs() -> None:
    assert parse_platforms([" linux/amd64", "linux/arm*/v?", "*/*"]) == (
        "linux/amd64",
        "linux/arm*/v?",
        "*/*",
    )
    assert parse_platforms(None) == ()


def test_the_config_refuses_a_bad_platform_as_the_cli_and_api_do() -> None:
    with pytest.raises(ValueError, match="invalid platform 'linux': expected os/arch"):
        Mirror(source="alpine", targets=["localhost:5000/x"], platforms=["linux"])


def test_filters_without_all_tags_are_refused_in_each_face_s_own_words() -> None:
    with pytest.raises(ConfigError, match=r"^include, exclude, semver and latest need all_tags$"):
        tag_filter(all_tags=False, latest=2)
    with pytest.raises(
        ConfigError, match=r"^--include, --exclude, --semver and --latest need --all-tags$"
    ):
        tag_filter(all_tags=False, include=["v.*"], names=CLI_NAMES)
    assert tag_filter(all_tags=False) is None


def test_a_tag_filter_selects_exact_tags_and_filters_alike() -> None:
    chosen = tag_filter(all_tags=True, tags=["edge"], include=[r"1\..*"], semver=">=1.1")
    assert chosen is not None
    assert sorted(chosen.select(["1.0", "1.1", "1.2", "edge", "2.0"])) == ["1.1", "1.2", "edge"]


def test_a_bad_regex_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="include"):
        tag_filter(all_tags=True, include=["(unclosed"])
