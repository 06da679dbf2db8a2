"""References: Docker's normalisation, oci: layouts, prefixes, and the grammar (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocimirror.errors import ReferenceError
from ocimirror.reference import Reference, is_docker_hub, join_prefix, parse_prefix

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", None, None),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("library/alpine", "docker.io", "library/alpine", None, None),
        ("area51/jenkins", "docker.io", "area51/jenkins", None, None),
        ("docker.io/alpine", "docker.io", "library/alpine", None, None),
        ("index.docker.io/alpine", "docker.io", "library/alpine", None, None),
        ("registry-1.docker.io/org/app", "docker.io", "org/app", None, None),
        ("docker://alpine:edge", "docker.io", "library/alpine", "edge", None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/team/app:1.2", "localhost:5000", "team/app", "1.2", None),
        ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", None, None),
        ("[::1]:5000/app", "[::1]:5000", "app", None, None),
        ("ghcr.io/org/app@" + D, "ghcr.io", "org/app", None, D),
        ("ghcr.io/org/app:v1@" + D, "ghcr.io", "org/app", "v1", D),
        ("Registry.Example.com/a/b", "Registry.Example.com", "a/b", None, None),
        ("quay.io/a__b/c-d/e.f_g", "quay.io", "a__b/c-d/e.f_g", None, None),
        ("us-docker.pkg.dev/p/r/img:latest", "us-docker.pkg.dev", "p/r/img", "latest", None),
        ("alpine:A_b-1.x", "docker.io", "library/alpine", "A_b-1.x", None),
    ],
)
def test_parse_normalises_like_docker(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.transport, ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker",
        registry,
        repository,
        tag,
        digest,
    )


def test_api_host_and_ref() -> None:
    hub = Reference.parse("alpine")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.ref == "latest"
    assert str(hub) == "docker.io/library/alpine"
    assert hub.familiar() == "alpine"
    assert Reference.parse("area51/jenkins:2").familiar() == "area51/jenkins:2"
    assert Reference.parse("library/a/b").familiar() == "library/a/b"
    pinned = Reference.parse("ghcr.io/o/a:v1@" + D)
    assert pinned.api_host == "ghcr.io"
    assert pinned.ref == D
    assert str(pinned) == "ghcr.io/o/a:v1@" + D
    assert pinned.familiar() == str(pinned)


def test_loopback() -> None:
    assert Reference.parse("localhost:5000/a").is_loopback
    assert Reference.parse("127.0.0.5/a").is_loopback
    assert Reference.parse("[::1]:5000/a").is_loopback
    assert not Reference.parse("registry.example.com/a").is_loopback
    assert not Reference.parse("10.0.0.1:5000/a").is_loopback
    assert not Reference.parse("oci:./x").is_loopback


def test_with_helpers() -> None:
    ref = Reference.parse("r.example/a:1")
    assert str(ref.with_tag("2")) == "r.example/a:2"
    assert str(ref.with_digest(D)) == f"r.example/a@{D}"
    assert str(ref.with_repository("b/c")) == "r.example/b/c:1"
    assert str(ref.repository_only()) == "r.example/a"
    with pytest.raises(ReferenceError, match="invalid tag"):
        ref.with_tag("-bad")
    with pytest.raises(ReferenceError, match="lowercase"):
        ref.with_repository("Bad")


@pytest.mark.parametrize(
    ("text", "path", "tag", "digest"),
    [
        ("oci:./bundle", "./bundle", None, None),
        ("oci:./bundle:1.2", "./bundle", "1.2", None),
        ("oci:/abs/dir:latest", "/abs/dir", "latest", None),
        (f"oci:./b@{D}", "./b", None, D),
        ("oci:rel", "rel", None, None),
    ],
)
def test_oci_layout(text: str, path: str, tag: str | None, digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.transport, ref.path, ref.tag, ref.digest) == ("oci", path, tag, digest)
    assert str(ref) == text
    assert ref.name == f"oci:{path}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" alpine", "padded"),
        ("Alpine", "must be lowercase"),
        ("docker.io/Org/app", "must be lowercase"),
        ("alpine:", "invalid tag"),
        ("alpine:-x", "invalid tag"),
        ("alpine:" + "x" * 129, "invalid tag"),
        ("alpine@sha256:abc", "invalid digest"),
        ("alpine@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("alpine@sha256:" + "A" * 64, "lowercase hex"),
        ("alpine@sha256:" + "a" * 63, "64 lowercase hex"),
        ("-alpine", "invalid repository path component"),
        ("a//b", "invalid repository path component"),
        ("alp ine", "invalid"),
        ("a..b/c", "invalid registry host"),
        ("a_b.c/d", "invalid registry host"),
        ("exa_mple.com:5000/a", "invalid registry host"),
        ("example.com:po/a", "invalid registry host"),
        ("example.com/", "missing repository"),
        ("http://example.com/a", "unsupported transport"),
        ("oci:", "missing layout directory"),
        ("oci::tag", "missing layout directory"),
        ("oci:./b:bad tag", "invalid tag"),
        ("x/" + "a" * 260, "longer than 255"),
    ],
)
def test_invalid_references_say_why(text: str, message: str) -> None:
    with pytest.raises(ReferenceError, match=message) as info:
        Reference.parse(text)
    assert repr(text)[:20] in str(info.value) or not text.strip()


def test_prefix_and_join() -> None:
    prefix = parse_prefix("registry.example.com/mirror")
    assert (prefix.registry, prefix.repository) == ("registry.example.com", "mirror")
    hello = Reference.parse("hello-world")
    assert str(join_prefix(prefix, hello)) == "registry.example.com/mirror/library/hello-world"
    jenkins = Reference.parse("area51/jenkins:2")
    assert str(join_prefix(prefix, jenkins)) == "registry.example.com/mirror/area51/jenkins:2"
    bare = parse_prefix("localhost:5000/")
    assert (bare.registry, bare.repository) == ("localhost:5000", "")
    assert str(join_prefix(bare, hello)) == "localhost:5000/library/hello-world"
    assert str(join_prefix(parse_prefix("r.io/a/b"), Reference.parse("ghcr.io/x/y@" + D))) == (
        f"r.io/a/b/x/y@{D}"
    )
    for bad in ("r.io/m:tag", "r.io/m@" + D, "oci:./x", "", "r.io/Up"):
        with pytest.raises(ReferenceError):
            parse_prefix(bad)
    with pytest.raises(ReferenceError, match="only registry images"):
        join_prefix(prefix, Reference.parse("oci:./x"))


# ---------------------------------------------------------------------------------------
# Property tests against the grammar of distribution's reference package:
#   reference := name [ ":" tag ] [ "@" digest ]
#   name := [domain '/'] path-component ['/' path-component]*
#   domain := domain-component ['.' domain-component]* [':' port-number]
#   path-component := alpha-numeric [separator alpha-numeric]*
#   separator := /[_.]|__|[-]*/      tag := /[\w][\w.-]{0,127}/
# The oracle below is written from the spec text, independently of the parser.

ALNUM = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
SEP = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    """One path component: alpha-numeric runs joined by separators."""
    parts = [draw(ALNUM)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(SEP), draw(ALNUM)]
    return "".join(parts)


@st.composite
def domains(draw: st.DrawFn) -> str:
    """A registry host that Docker recognises as a domain (has '.', ':' or is localhost)."""
    label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
    kind = draw(st.sampled_from(["dotted", "port", "localhost"]))
    if kind == "localhost":
        host = "localhost"
    else:
        host = ".".join(draw(st.lists(label, min_size=2 if kind == "dotted" else 1, max_size=3)))
    if kind == "port" or draw(st.booleans()):
        host += f":{draw(st.integers(1, 65535))}"
    return host


@st.composite
def references(draw: st.DrawFn) -> tuple[str, str | None, str, str | None, str | None]:
    """A valid reference string with its expected parts (domain, path, tag, digest)."""
    domain = draw(st.none() | domains())
    components = draw(st.lists(path_components(), min_size=1, max_size=3))
    if domain is None and len(components) > 1:
        # Docker reads a first component with a '.' (or `localhost`) as a registry host.
        components[0] = components[0].replace(".", "_").replace("localhost", "l0calhost")
    path = "/".join(components)
    tag = draw(st.none() | st.from_regex(r"[\w][\w.-]{0,20}", fullmatch=True).filter(str.isascii))
    digest = draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
    digest = f"sha256:{digest}" if digest else None
    text = (f"{domain}/" if domain else "") + path
    text += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return text, domain, path, tag, digest


@settings(max_examples=400)
@given(references())
def test_every_grammatical_reference_parses(
    case: tuple[str, str | None, str, str | None, str | None],
) -> None:
    text, domain, path, tag, digest = case
    ref = Reference.parse(text)
    if domain and domain.lower() not in ("docker.io", "index.docker.io"):
        assert ref.registry == domain
        assert ref.repository == path
    else:
        assert ref.registry == "docker.io"
        assert ref.repository == (path if "/" in path else f"library/{path}")
    assert (ref.tag, ref.digest) == (tag, digest)
    # The printed form is canonical: it parses back to the same reference.
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar()) == ref


_GRAMMAR = re.compile(
    r"(?:(?P<domain>(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[_.]|__|[-]*)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[_.]|__|[-]*)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?",
    re.ASCII,
)


@settings(max_examples=1500)
@given(st.text("ab0.-_:/@Aé sha256" + "f" * 3, max_size=24))
def test_parse_never_accepts_what_the_grammar_refuses(text: str) -> None:
    """Random strings: whatever the parser accepts is a sentence of the grammar."""
    try:
        ref = Reference.parse(text)
    except ReferenceError as e:
        message = str(e)
        if not message:  # every refusal says something
            raise AssertionError(f"empty message refusing {text!r}") from e
        return
    body = text.removeprefix("docker://")
    assert _GRAMMAR.fullmatch(body), f"accepted non-grammatical {text!r} as {ref}"


@settings(max_examples=400)
@given(references(), st.integers(0, 40), st.sampled_from("A!#$%^&* é\t\\\"'"))
def test_a_foreign_character_is_refused(
    case: tuple[str, str | None, str, str | None, str | None], pos: int, bad: str
) -> None:
    """Insert a character outside the grammar's alphabet anywhere: a clear ReferenceError."""
    text = case[0]
    pos = min(pos, len(text))
    mutated = text[:pos] + bad + text[pos:]
    if bad == "A" and _GRAMMAR.fullmatch(mutated):
        # An uppercase letter is legal in a host name and a tag.
        m = _GRAMMAR.fullmatch(mutated)
        assert m is not None
        if "A" not in m.group("path"):
            return
    with pytest.raises(ReferenceError):
        Reference.parse(mutated)


@pytest.mark.parametrize(
    "host",
    [
        "docker.io",
        "Docker.IO",
        "index.docker.io",
        "registry-1.docker.io",
        "registry.hub.docker.com",
    ],
)
def test_every_hub_name_is_docker_hub(host: str) -> None:
    assert is_docker_hub(host)
    assert Reference.parse(f"{host}/library/alpine").registry == "docker.io"


@pytest.mark.parametrize(
    "host", ["ghcr.io", "docker.io.evil.example", "hub.docker.com", "localhost"]
)
def test_other_hosts_are_not_docker_hub(host: str) -> None:
    assert not is_docker_hub(host)
