"""The `ocimirror` command line: parse arguments, call the engine, render results.

Exit codes: 0 every image copied or already there; 1 every image failed (or a fatal
error); 2 a usage error (bad reference, option or credential); 3 some images failed;
143 (130) stopped by SIGTERM (SIGINT) before the end, cleanly (`ocimirror.stopping`).

Only typer is imported up front: `--help` and `version` need nothing else. The engine,
aiohttp, rich's console and the config's pydantic models are imported inside the
commands that use them (tests/test_cli.py checks that the help path stays without them).

Why it is long: most of it is the declarations of the `copy` and `mirror` options
(typer's `Annotated` parameters with their help texts) and their typed form `CopyFlags`;
the logic is `_execute` and the summary rendering.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import logincheck, version_line
from .compose import scheduled_mirrors
from .dockermirror import docker_mirror
from .proxy import commands as proxy_commands
from .service import commands as service_commands
from .settings import cli_options
from .sync import commands as sync_commands
from .sync import dockersync
from .workers import commands as worker_commands

if TYPE_CHECKING:
    from rich.console import Console

    from .auth.credentials import Credentials, Keychain
    from .auth.providers import ProviderName
    from .reference import Reference
    from .settings.config import Config
    from .transfer.copy import CopyOptions
    from .transfer.engine import RunSummary, Side
    from .transfer.tags import TagFilter

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

app = typer.Typer(
    name="ocimirror",
    help="Mirror container images between registries and OCI layouts: once, on a schedule,"
    " as an HTTP service, or as a pull-through registry proxy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# -- shared options -------------------------------------------------------------------

AllTags = Annotated[
    bool, typer.Option("--all-tags", "-a", help="Copy every tag of the repository.")
]
Include = Annotated[
    list[str] | None,
    typer.Option(
        "--include", help="With --all-tags: keep tags fully matching REGEX.", metavar="REGEX"
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", help="With --all-tags: drop tags fully matching REGEX.", metavar="REGEX"
    ),
]
Semver = Annotated[
    str | None,
    typer.Option(
        "--semver",
        help="With --all-tags: keep version tags in RANGE (e.g. '>=1.2 <2').",
        metavar="RANGE",
    ),
]
Latest = Annotated[
    int | None,
    typer.Option("--latest", help="With --all-tags: keep the N highest version tags.", metavar="N"),
]
Platforms = Annotated[
    list[str] | None,
    typer.Option(
        "--platform",
        help=(
            "Copy only these platforms of a multi-arch image (os/arch\\[/variant],"
            " globs like linux/*); repeatable."
        ),
    ),
]
IncludeForeign = Annotated[
    bool,
    typer.Option("--include-foreign", help="Also copy non-distributable (foreign) layers."),
]
Force = Annotated[
    bool, typer.Option("--force", help="Push even when the destination already has the digest.")
]
NoReferrers = Annotated[
    bool,
    typer.Option(
        "--no-referrers",
        help="Do not copy signatures, SBOMs and attestations (OCI referrers, cosign tags).",
    ),
]
ReferrersInclude = Annotated[
    list[str] | None,
    typer.Option(
        "--referrers-include",
        help="Copy only referrers whose artifactType matches this glob (repeatable).",
        metavar="GLOB",
    ),
]
ReferrersExclude = Annotated[
    list[str] | None,
    typer.Option(
        "--referrers-exclude",
        help="Do not copy referrers whose artifactType matches this glob (repeatable).",
        metavar="GLOB",
    ),
]
RequireSigned = Annotated[
    bool,
    typer.Option(
        "--require-signed",
        help="Skip (and report) an image without a signature (cosign, sigstore, notation).",
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Find what would be copied (images and referrers); write nothing."
    ),
]
SrcCreds = Annotated[
    str | None,
    typer.Option(
        "--src-creds", help="Source credentials USER:PASSWORD.", envvar="OCIMIRROR_SRC_CREDS"
    ),
]
DestCreds = Annotated[
    str | None,
    typer.Option(
        "--dest-creds", help="Destination credentials USER:PASSWORD.", envvar="OCIMIRROR_DEST_CREDS"
    ),
]
SrcToken = Annotated[
    str | None,
    typer.Option(
        "--src-token", help="Bearer token for the source registry.", envvar="OCIMIRROR_SRC_TOKEN"
    ),
]
DestToken = Annotated[
    str | None,
    typer.Option(
        "--dest-token",
        help="Bearer token for the destination registry.",
        envvar="OCIMIRROR_DEST_TOKEN",
    ),
]
SrcTls = Annotated[
    str,
    typer.Option(
        "--src-tls-verify",
        is_flag=False,
        flag_value="true",
        metavar="[=BOOL]",
        help="Verify the source registry's TLS certificate (--src-tls-verify=false to not).",
    ),
]
DestTls = Annotated[
    str,
    typer.Option(
        "--dest-tls-verify",
        is_flag=False,
        flag_value="true",
        metavar="[=BOOL]",
        help="Verify the destination registry's TLS certificate (--dest-tls-verify=false to not).",
    ),
]
SrcCa = Annotated[
    str | None,
    typer.Option("--src-ca-file", help="CA bundle (PEM) for the source registry.", metavar="PATH"),
]
DestCa = Annotated[
    str | None,
    typer.Option(
        "--dest-ca-file", help="CA bundle (PEM) for the destination registry.", metavar="PATH"
    ),
]
PlainHttp = Annotated[
    bool,
    typer.Option(
        "--plain-http",
        help="Talk plain HTTP to both registries (loopback hosts use it unless they speak TLS).",
    ),
]
AuthFile = Annotated[
    str | None,
    typer.Option("--authfile", help="Docker config.json to read credentials from.", metavar="PATH"),
]
Jobs = Annotated[int, typer.Option("--jobs", "-j", min=1, max=256, help="Images copied at once.")]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only failures and the summary.")]
TargetRegistry = sync_commands.TargetRegistry
RegistryEndpoint = cli_options.RegistryEndpoint
LogFormat = Annotated[
    str,
    typer.Option("--log-format", help="Log format when not on a terminal: text or json."),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]


def _usage(message: str) -> typer.Exit:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _truth(value: str, flag: str) -> bool:
    """Read a boolean flag value the way skopeo's flags take it (`--flag=false`)."""
    from .errors import ConfigError

    text = value.strip().lower()
    if text in ("true", "1", "yes", "t"):
        return True
    if text in ("false", "0", "no", "f"):
        return False
    raise ConfigError(f"{flag} takes true or false, not {value!r}")


def _credentials(creds: str | None, token: str | None, flag: str) -> Credentials | None:
    from .auth.credentials import Credentials, parse_user_pass
    from .errors import ConfigError

    if creds and token:
        raise ConfigError(f"give either --{flag}-creds or --{flag}-token, not both")
    if creds:
        return parse_user_pass(creds)
    if token:
        return Credentials(registry_token=token)
    return None


def _parse_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """Check `--platform` values; each may list several, comma-separated."""
    from .transfer.options import parse_platforms

    parts = [part for p in platforms for part in p.split(",")]
    return parse_platforms(parts, name="--platform")


def _run(
    pairs: list[tuple[Reference, Reference]],
    *,
    all_tags: bool,
    tag_filter: TagFilter | None,
    copy_options: CopyOptions,
    source: Side,
    destination: Side,
    keychain: Keychain,
    jobs: int,
    json_out: bool,
    quiet: bool,
) -> int:
    from rich.console import Console

    from .progress import LogProgress, RichProgress
    from .stopping import Stopped, run_stoppable
    from .transfer.copy import Progress
    from .transfer.engine import run_copies

    interactive = sys.stderr.isatty() and not json_out and not quiet
    console = Console(stderr=True)
    holder: list[RichProgress] = []

    def make_progress(total: int) -> Progress:
        if interactive:
            bar = RichProgress(console, total)
            bar.__enter__()
            holder.append(bar)
            return bar
        return LogProgress()

    try:
        summary = run_stoppable(
            run_copies(
                pairs,
                all_tags=all_tags,
                tag_filter=tag_filter,
                copy_options=copy_options,
                source=source,
                destination=destination,
                keychain=keychain,
                image_concurrency=jobs,
                progress=make_progress,
            )
        )
    except Stopped as e:
        console.print(
            f"[red]error:[/] {e}: what was copied stays, nothing half-copied is tagged;"
            " run it again to finish",
            highlight=False,
            soft_wrap=True,
        )
        return e.exit_code
    finally:
        for bar in holder:
            bar.__exit__(None, None, None)
    return _report(summary, console=console, json_out=json_out, interactive=interactive)


def _report(summary: RunSummary, *, console: Console, json_out: bool, interactive: bool) -> int:
    from rich.markup import escape

    from .transfer.tags import shown

    if json_out:
        print(json.dumps(summary.to_json(), indent=2))
    counts = summary.to_json()["counts"]
    failed = summary.failed
    if not interactive:
        # Failures planned before copying never reached the progress display.
        for r in failed:
            if not r.seconds:
                console.print(
                    f"[red]✗[/] {escape(r.source)}: {escape(r.error)}",
                    highlight=False,
                    soft_wrap=True,
                )
    mib = sum(r.bytes_copied for r in summary.results) / (1024 * 1024)
    line = (
        f"{counts['copied']} copied, {counts['unchanged']} unchanged, {counts['failed']} failed"
        + (f", {counts['skipped']} skipped (unsigned)" if counts.get("skipped") else "")
        + (f", {counts['planned']} to copy (dry run)" if counts.get("planned") else "")
        + f" ({mib:.1f} MiB in {summary.seconds:.1f} s)"
    )
    console.print(line, highlight=False)
    for skip in summary.skipped:
        console.print(
            f"[yellow]skipped[/] {escape(skip.source)}: {skip.reason} {escape(shown(skip.tag))}",
            highlight=False,
            soft_wrap=True,
        )
    if failed:
        console.print("[red]failed:[/]", highlight=False)
        for r in failed:
            console.print(
                f"  {escape(r.source)} → {escape(r.destination)}: {escape(r.error)}",
                highlight=False,
                soft_wrap=True,
            )
    if not summary.results:
        console.print("[yellow]nothing to copy (no tag matched)[/]", highlight=False)
        return EXIT_OK
    if not failed:
        return EXIT_OK
    return EXIT_PARTIAL if len(failed) < len(summary.results) else EXIT_FAILED


def _sides(
    *,
    src_creds: str | None,
    src_token: str | None,
    dest_creds: str | None,
    dest_token: str | None,
    src_tls_verify: bool,
    dest_tls_verify: bool,
    src_ca_file: str | None,
    dest_ca_file: str | None,
    plain_http: bool,
) -> tuple[Side, Side]:
    from .client import HostOptions
    from .transfer.engine import Side

    plain = True if plain_http else None
    src = Side(
        HostOptions(tls_verify=src_tls_verify, ca_file=src_ca_file, plain_http=plain),
        _credentials(src_creds, src_token, "src"),
    )
    dst = Side(
        HostOptions(tls_verify=dest_tls_verify, ca_file=dest_ca_file, plain_http=plain),
        _credentials(dest_creds, dest_token, "dest"),
    )
    return src, dst


@dataclass(frozen=True)
class CopyFlags:
    """The options of `copy` and `mirror`, as the command line gave them."""

    all_tags: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver: str | None = None
    latest: int | None = None
    platform: tuple[str, ...] = ()
    include_foreign: bool = False
    force: bool = False
    no_referrers: bool = False
    referrers_include: tuple[str, ...] = ()
    referrers_exclude: tuple[str, ...] = ()
    require_signed: bool = False
    dry_run: bool = False
    src_creds: str | None = None
    dest_creds: str | None = None
    src_token: str | None = None
    dest_token: str | None = None
    src_tls_verify: str = "true"
    dest_tls_verify: str = "true"
    src_ca_file: str | None = None
    dest_ca_file: str | None = None
    plain_http: bool = False
    authfile: str | None = None
    registry_endpoint: tuple[str, ...] = ()
    jobs: int = 16
    json_out: bool = False
    quiet: bool = False
    log_format: str = "text"
    log_level: str = "info"

    @classmethod
    def given(cls, params: Mapping[str, Any]) -> CopyFlags:
        """The flags among a command's parameters (`locals()`); repeated ones as tuples."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = params[f.name]
            values[f.name] = tuple(value or ()) if isinstance(f.default, tuple) else value
        return cls(**values)


def _execute(pairs: Callable[[], list[tuple[Reference, Reference]]], flags: CopyFlags) -> None:
    """Validate everything a copy command was given, run it, and exit with its code."""
    from .errors import OcimirrorError
    from .logs import configure
    from .transfer.copy import CopyOptions
    from .transfer.options import CLI_NAMES, tag_filter
    from .transfer.referrers import ReferrerOptions

    configure(fmt="json" if flags.log_format == "json" else "text", level=flags.log_level)
    try:
        planned = pairs()
        tags = tag_filter(
            all_tags=flags.all_tags,
            include=flags.include,
            exclude=flags.exclude,
            semver=flags.semver,
            latest=flags.latest,
            names=CLI_NAMES,
        )
        src_side, dst_side = _sides(
            src_creds=flags.src_creds,
            src_token=flags.src_token,
            dest_creds=flags.dest_creds,
            dest_token=flags.dest_token,
            src_tls_verify=_truth(flags.src_tls_verify, "--src-tls-verify"),
            dest_tls_verify=_truth(flags.dest_tls_verify, "--dest-tls-verify"),
            src_ca_file=flags.src_ca_file,
            dest_ca_file=flags.dest_ca_file,
            plain_http=flags.plain_http,
        )
        options = CopyOptions(
            platforms=_parse_platforms(flags.platform),
            include_foreign=flags.include_foreign,
            force=flags.force,
            referrers=ReferrerOptions(
                enabled=not flags.no_referrers,
                include=flags.referrers_include,
                exclude=flags.referrers_exclude,
                require_signed=flags.require_signed,
            ),
            dry_run=flags.dry_run,
        )
        from .settings.connection import apply_endpoint_flags, keychain_from

        apply_endpoint_flags(flags.registry_endpoint)
        keychain = keychain_from({}, authfile=flags.authfile)
    except (OcimirrorError, ValueError) as e:
        raise _usage(str(e)) from None
    code = _run(
        planned,
        all_tags=flags.all_tags,
        tag_filter=tags,
        copy_options=options,
        source=src_side,
        destination=dst_side,
        keychain=keychain,
        jobs=flags.jobs,
        json_out=flags.json_out,
        quiet=flags.quiet,
    )
    raise typer.Exit(code)


@app.command()
def copy(
    source: Annotated[
        str, typer.Argument(help="Source image or repository (oci:DIR\\[:TAG] for a layout).")
    ],
    destination: Annotated[str, typer.Argument(help="Destination image or repository.")],
    all_tags: AllTags = False,
    include: Include = None,
    exclude: Exclude = None,
    semver: Semver = None,
    latest: Latest = None,
    platform: Platforms = None,
    include_foreign: IncludeForeign = False,
    force: Force = False,
    no_referrers: NoReferrers = False,
    referrers_include: ReferrersInclude = None,
    referrers_exclude: ReferrersExclude = None,
    require_signed: RequireSigned = False,
    dry_run: DryRun = False,
    src_creds: SrcCreds = None,
    dest_creds: DestCreds = None,
    src_token: SrcToken = None,
    dest_token: DestToken = None,
    src_tls_verify: SrcTls = "true",
    dest_tls_verify: DestTls = "true",
    src_ca_file: SrcCa = None,
    dest_ca_file: DestCa = None,
    plain_http: PlainHttp = False,
    authfile: AuthFile = None,
    registry_endpoint: RegistryEndpoint = None,
    jobs: Jobs = 16,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    log_format: LogFormat = "text",
    log_level: LogLevel = "info",
) -> None:
    """Copy an image, or with --all-tags a repository, keeping digests."""
    flags = CopyFlags.given(locals())
    from .reference import Reference

    _execute(lambda: [(Reference.parse(source), Reference.parse(destination))], flags)


@app.command()
def mirror(
    images: Annotated[
        list[str], typer.Argument(help="Images to mirror (hello-world, area51/jenkins:2, …).")
    ],
    destination: Annotated[
        str,
        typer.Option(
            "--destination", "-d", help="Destination prefix: REGISTRY\\[/PATH].", metavar="PREFIX"
        ),
    ],
    all_tags: AllTags = False,
    include: Include = None,
    exclude: Exclude = None,
    semver: Semver = None,
    latest: Latest = None,
    platform: Platforms = None,
    include_foreign: IncludeForeign = False,
    force: Force = False,
    no_referrers: NoReferrers = False,
    referrers_include: ReferrersInclude = None,
    referrers_exclude: ReferrersExclude = None,
    require_signed: RequireSigned = False,
    dry_run: DryRun = False,
    src_creds: SrcCreds = None,
    dest_creds: DestCreds = None,
    src_token: SrcToken = None,
    dest_token: DestToken = None,
    src_tls_verify: SrcTls = "true",
    dest_tls_verify: DestTls = "true",
    src_ca_file: SrcCa = None,
    dest_ca_file: DestCa = None,
    plain_http: PlainHttp = False,
    authfile: AuthFile = None,
    registry_endpoint: RegistryEndpoint = None,
    jobs: Jobs = 16,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    log_format: LogFormat = "text",
    log_level: LogLevel = "info",
) -> None:
    """Mirror images under a destination prefix, keeping their paths (docker-mirror's interface).

    `-d registry.example.com/mirror hello-world` copies docker.io/library/hello-world:latest
    to registry.example.com/mirror/library/hello-world:latest.
    """
    flags = CopyFlags.given(locals())

    def pairs() -> list[tuple[Reference, Reference]]:
        from .reference import Reference, parse_prefix
        from .transfer.plan import plan_mirror

        refs = [Reference.parse(i) for i in images]
        if all_tags:
            refs = [Reference(r.transport, r.registry, r.repository, path=r.path) for r in refs]
        return plan_mirror(parse_prefix(destination), refs)

    _execute(pairs, flags)


config_app = typer.Typer(
    help="Write, check and describe the mirror config file.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("init")
def config_init(
    output: Annotated[
        str, typer.Option("--output", "-o", help="Where to write it ('-' for stdout).")
    ] = "mirror.yaml",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starting config."""
    from rich.console import Console
    from rich.markup import escape

    from .sync.example import EXAMPLE_CONFIG

    if output == "-":
        sys.stdout.write(EXAMPLE_CONFIG)
        return
    path = Path(output)
    if path.exists() and not force:
        raise _usage(f"{path} exists (use --force to overwrite it)")
    path.write_text(EXAMPLE_CONFIG)
    Console(stderr=True).print(f"wrote {escape(str(path))}", highlight=False)


@config_app.command("validate")
def config_validate(
    path: Annotated[str, typer.Argument(help="The config file.")],
    target_registry: TargetRegistry = None,
) -> None:
    """Check a config: every problem with file:line:column and its field path."""
    from rich.console import Console
    from rich.markup import escape

    from .errors import OcimirrorError
    from .settings.loading import load_config

    console = Console(stderr=True)
    try:
        loaded = load_config(path, target_registry=target_registry)
    except OcimirrorError as e:
        console.print(escape(str(e)), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    for warning in [*loaded.warnings, *_cloud_logins_missing(loaded.config)]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    n = len(loaded.config.mirrors)
    console.print(
        f"{escape(path)}: valid ({loaded.format} format, {n} mirror{'s' if n != 1 else ''})",
        highlight=False,
    )


def _cloud_logins_missing(config: Config) -> list[str]:
    """A line for each cloud registry of the config whose login's SDK is not installed."""
    from .auth.providers import missing_extra
    from .errors import ReferenceError
    from .reference import Reference

    hosts: dict[str, ProviderName | None] = {
        h: r.credentials.provider if r.credentials else None for h, r in config.registries.items()
    }
    for mirror in config.mirrors:
        for text in [*mirror.sources, *mirror.targets]:
            try:
                ref = Reference.parse(text)
            except ReferenceError:
                continue
            hosts.setdefault(ref.registry, None)
    lines = [missing_extra(host, provider) for host, provider in hosts.items()]
    return [line for line in lines if line]


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config format."""
    from .settings.config import json_schema

    print(json.dumps(json_schema(), indent=2))


app.command("sync")(sync_commands.sync)
app.command("run")(sync_commands.run)
app.command("status")(sync_commands.status)
# serve -c runs the sync daemon beside the API: composed here, above both faces.
app.command("serve", context_settings={"obj": scheduled_mirrors})(service_commands.serve)
app.command("proxy")(proxy_commands.proxy)
app.command("docker-sync", context_settings=dockersync.CONTEXT)(dockersync.docker_sync)
app.command("docker-mirror")(docker_mirror)
app.command("login-check")(logincheck.login_check)
app.command("worker")(worker_commands.worker)


@app.command()
def version() -> None:
    """Print the version."""
    print(version_line())


#: Boolean flags spelled as skopeo spells them: bare (true) or `--flag=false`.
VALUED_BOOL_FLAGS = frozenset({"--src-tls-verify", "--dest-tls-verify"})


def skopeo_style_args(args: list[str]) -> list[str]:
    """Give bare valued boolean flags their `=true`, so the next argument is never eaten."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(f"{arg}=true" if arg in VALUED_BOOL_FLAGS else arg)
    return out


def main() -> None:
    """Run the command line (the `ocimirror` console script).

    A missing optional package, wherever a face finds it needs one, ends the command with
    one line naming the extra to install (exit status 2), not a traceback.
    """
    try:
        app(args=skopeo_style_args(sys.argv[1:]), prog_name="ocimirror")
    except Exception as e:
        from .extras import MissingExtra  # here: help pages import none of the engine

        if not isinstance(e, MissingExtra):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
