"""The `ocimirror sync` and `ocimirror status` commands (registered by `ocimirror.cli`).

Heavy modules (asyncio, rich, SQLAlchemy, the config's pydantic models, the planner) are
imported when a command runs: registering the commands costs `ocimirror --help` nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ..settings import cli_options

if TYPE_CHECKING:
    from rich.console import Console

    from ..settings.config import Config
    from ..state.db import StateDB
    from ..transfer.copy import ImageResult
    from .runner import MirrorPass, Mode

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

_MARK = {
    "new": ("+", "green"),
    "changed": ("~", "yellow"),
    "missing-at-target": ("!", "red"),
    "unchanged": ("=", "dim"),
    "immutable": ("·", "dim"),
}

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="The mirror config file.", metavar="FILE"),
]
StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="State database URL (default: NAME.state.db beside the config).",
        envvar="OCIMIRROR_STATE",
        metavar="URL",
    ),
]
RegistryEndpoint = cli_options.RegistryEndpoint
TrustStateOpt = Annotated[
    bool,
    typer.Option(
        "--trust-state",
        help="Skip the target HEAD of a tag the state database says was written there and"
        " the target's tags list still shows (every mirror; config: trust_state). Every"
        " target is looked at again after verify_every (default 24h).",
        envvar="OCIMIRROR_TRUST_STATE",
    ),
]
ExecutionOpt = cli_options.ExecutionOpt
TargetRegistry = Annotated[
    str | None,
    typer.Option(
        "--target-registry",
        help="Target registry for a Docker Mirror Image config.ini.",
        envvar="OCIMIRROR_TARGET_REGISTRY",
        metavar="REGISTRY[/PATH]",
    ),
]


#: Where Docker Mirror Image's config.ini is found without --config: the working
#: directory, its `src/` (where its README puts it) and its image's /app/src.
INI_PATHS = ("config.ini", "src/config.ini", "/app/src/config.ini")


def _config_or_ini(config: Path | None) -> Path:
    """--config, else Docker Mirror Image's config.ini where it keeps it."""
    if config is not None:
        return config
    for candidate in INI_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise _fail(f"give --config FILE (no config.ini in {', '.join(INI_PATHS)})")


def _execution(value: cli_options.Execution | None) -> Literal["in-process", "workers"] | None:
    """The `--execution` choice as the daemon's type."""
    if value is None:
        return None
    return "workers" if value is cli_options.Execution.WORKERS else "in-process"


def _fail(message: str) -> typer.Exit:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _fail_state(e: Exception) -> typer.Exit:
    """One line for a state database that failed during a pass (exit 1): what the driver
    said (its first line, no SQL, no parameters); the next pass marks the run interrupted."""
    cause = getattr(e, "orig", None) or e
    said = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    _fail(
        f"the state database failed during the pass ({type(cause).__name__}: {said});"
        " what was copied stays, the run is marked interrupted by the next pass: run it again"
    )
    return typer.Exit(EXIT_FAILED)


def _configure_logs(cfg: Config) -> None:
    """Set up logging as the config's `logging` block says."""
    from ..logs import configure

    lg = cfg.logging
    configure(
        fmt=lg.format, level=lg.level, color=lg.color, output=lg.output, time_format=lg.time_format
    )


def _one_off(
    source: str,
    target: str,
    source_username: str | None,
    source_password: str | None,
    target_username: str | None,
    target_password: str | None,
) -> Config:
    """docker-sync's one-off form as a one-mirror Config."""
    from ..reference import Reference
    from ..settings.config import Config

    registries: dict[str, Any] = {}
    buckets: dict[str, Any] = {}
    for ref_text, user, password in (
        (source, source_username, source_password),
        (target, target_username, target_password),
    ):
        if user or password:
            ref = Reference.parse(ref_text)
            creds = {"credentials": {"username": user, "password": password}}
            if ref.is_bucket:  # the access key id and the secret
                buckets[f"{ref.transport}://{ref.registry}"] = creds
            else:
                registries[ref.registry] = creds
    return Config.model_validate(
        {
            "registries": registries,
            "buckets": buckets,
            "mirrors": [{"source": source, "targets": [target]}],
        }
    )


def _print_plan(console: Console, passes: list[MirrorPass], *, verbose: bool) -> None:
    from rich.markup import escape

    for p in passes:
        targets = sorted({str(t.target.repository_only()) for t in p.plan.tasks})
        console.print(
            f"[bold]{escape(p.mirror)}[/] → {escape(', '.join(targets) or '(nothing)')}",
            highlight=False,
        )
        for t in p.plan.tasks:
            if not verbose and t.reason in ("unchanged", "immutable"):
                continue
            mark, colour = _MARK[t.reason]
            reason = "unchanged (trusted)" if t.trusted else t.reason
            detail = ""
            if t.reason == "changed":
                detail = f"  {t.target_digest[7:19]} → {t.source_digest[7:19]}"
            console.print(
                f"  [{colour}]{mark} {escape(t.target.ref):<24} {reason}[/]{detail}",
                highlight=False,
            )
        for ref in p.plan.purges:
            console.print(f"  [red]- {escape(ref.ref):<24} purge[/]", highlight=False)
        for e in p.plan.errors:
            console.print(f"  [red]✗ {escape(e.reference)}: {escape(e.error)}[/]", highlight=False)
        for r in p.planned + p.referrer_checks:
            line = _referrers_line(r)
            if line:
                console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        for repo in p.would_create:
            console.print(f"  [green]+ would create repository {escape(repo)}[/]", highlight=False)
        counts = {r: p.plan.count(r) for r in _MARK}
        needed = counts["new"] + counts["changed"] + counts["missing-at-target"]
        purge = f", {len(p.plan.purges)} to purge" if p.plan.purges else ""
        console.print(
            f"  {needed} to copy, {counts['unchanged']} unchanged{_trusted(p)},"
            f" {counts['immutable']} immutable{purge}, {len(p.plan.errors)} errors",
            highlight=False,
        )


def sync(
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the plan (what and why) and the referrers it would copy; copy nothing.",
        ),
    ] = False,
    missing_only: Annotated[
        bool,
        typer.Option("--missing-only", help="Copy only tags the target lacks; leave moved tags."),
    ] = False,
    mirror: Annotated[
        list[str] | None,
        typer.Option("--mirror", "-m", help="Only this mirror (by name); repeatable."),
    ] = None,
    state: StateOpt = None,
    no_state: Annotated[
        bool, typer.Option("--no-state", help="Use no state database (immutable tags off).")
    ] = False,
    source: Annotated[
        str | None, typer.Option("--source", help="One-off: the source image or repository.")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="One-off: the target repository.")
    ] = None,
    source_username: Annotated[str | None, typer.Option("--source-username")] = None,
    source_password: Annotated[
        str | None, typer.Option("--source-password", envvar="OCIMIRROR_SOURCE_PASSWORD")
    ] = None,
    target_username: Annotated[str | None, typer.Option("--target-username")] = None,
    target_password: Annotated[
        str | None, typer.Option("--target-password", envvar="OCIMIRROR_TARGET_PASSWORD")
    ] = None,
    target_registry: TargetRegistry = None,
    registry_endpoint: RegistryEndpoint = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="With --dry-run: list unchanged tags too.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="A JSON summary on stdout.")] = False,
    trust_state: TrustStateOpt = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Look at every target this pass, trusting no state (a full check)."
        ),
    ] = False,
) -> None:
    """One sync pass over the config's mirrors (or a one-off --source/--target), then exit."""
    from rich.console import Console
    from rich.markup import escape

    from ..errors import OcimirrorError
    from ..settings.connection import apply_endpoint_flags
    from ..settings.loading import load_config
    from ..state.connection import default_url
    from ..state.db import StateDB
    from ..stopping import Stopped, run_stoppable

    console = Console(stderr=True)
    try:
        apply_endpoint_flags(registry_endpoint)
        if (source is None) != (target is None):
            raise _fail("--source and --target go together")
        if source is not None and target is not None:
            if config is not None:
                raise _fail("give either --config or --source/--target, not both")
            cfg = _one_off(
                source, target, source_username, source_password, target_username, target_password
            )
            url = state
        else:
            config = _config_or_ini(config)
            loaded = load_config(config, target_registry=target_registry)
            for w in loaded.warnings:
                console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
            cfg = loaded.config
            url = state or cfg.state or default_url(config)
        if mirror:
            unknown = sorted(set(mirror) - {m.label for m in cfg.mirrors})
            if unknown:
                raise _fail(f"no mirror named {', '.join(unknown)} in the config")
    except OcimirrorError as e:
        raise _fail(str(e)) from None
    except ValueError as e:
        raise _fail(str(e)) from None
    _configure_logs(cfg)
    mode: Mode = "dry-run" if dry_run else "missing-only" if missing_only else "all"

    async def go() -> list[MirrorPass]:
        from ..state.retention import prune_logged
        from .runner import sync_pass

        trust = trust_state or None
        if url is None or no_state:
            return await sync_pass(cfg, state=None, mode=mode, mirrors=mirror)
        async with StateDB(url) as db:
            passes = await sync_pass(
                cfg, state=db, mode=mode, mirrors=mirror, trust_state=trust, verify=verify
            )
            if mode != "dry-run":  # the history older than keep_history goes
                await prune_logged(db, cfg.history_limit)
            return passes

    from sqlalchemy.exc import SQLAlchemyError

    try:
        passes = run_stoppable(go())
    except OcimirrorError as e:
        raise _fail(str(e)) from None
    except SQLAlchemyError as e:  # the state database went away mid-pass (or broke)
        raise _fail_state(e) from None
    except Stopped as e:
        console.print(
            f"[red]error:[/] {e}: its runs are recorded as interrupted; run it again to finish",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(e.exit_code) from None
    if json_out:
        print(json.dumps([_pass_json(p) for p in passes], indent=2))
    if dry_run:
        _print_plan(console, passes, verbose=verbose)
        raise typer.Exit(EXIT_OK if not any(p.failed for p in passes) else EXIT_PARTIAL)
    for p in passes:
        colour = {"ok": "green", "partial": "yellow", "failed": "red"}[p.status]
        console.print(
            f"[{colour}]{p.status}[/] {escape(p.mirror)}: {p.copied} copied,"
            f" {p.plan.count('unchanged')} unchanged{_trusted(p)},"
            f" {p.plan.count('immutable')} immutable"
            f"{f', {len(p.purged)} purged' if p.purged else ''},"
            f" {len(p.failed)} failed ({p.bytes / 1048576:.1f} MiB in {p.seconds:.1f} s)",
            highlight=False,
            soft_wrap=True,  # one line per mirror, however narrow the terminal
        )
        for line in p.failed:
            console.print(f"  [red]✗[/] {escape(line)}", highlight=False, soft_wrap=True)
    statuses = {p.status for p in passes}
    if statuses <= {"ok"}:
        raise typer.Exit(EXIT_OK)
    raise typer.Exit(EXIT_FAILED if statuses == {"failed"} else EXIT_PARTIAL)


def _trusted(p: MirrorPass) -> str:
    """` (N trusted)` when the pass trusted the state for N unchanged tags."""
    trusted = sum(1 for t in p.plan.tasks if t.trusted)
    return f" ({trusted} trusted)" if trusted else ""


def _referrers_line(r: ImageResult) -> str:
    """A dry run's line about one image's referrers ("" when there is nothing to say)."""
    if r.error:
        return f"✗ {r.destination}: {r.error}"
    counts = Counter(x.status for x in r.referrers)
    if not counts:
        return ""
    words = {"found": "to copy", "present": "present", "filtered": "filtered"}
    said = ", ".join(f"{counts[k]} {w}" for k, w in words.items() if counts[k])
    return f"↳ {r.destination}: referrers {said}"


def _image_json(r: ImageResult) -> dict[str, Any]:
    return {
        "source": r.source,
        "target": r.destination,
        "status": r.status,
        "error": r.error,
        "referrers": [x.to_json() for x in r.referrers],
        **({"reason": r.reason} if r.reason else {}),
    }


def _pass_json(p: MirrorPass) -> dict[str, Any]:
    return {
        "mirror": p.mirror,
        "status": p.status,
        "seconds": round(p.seconds, 3),
        "plan_seconds": round(p.plan_seconds, 3),
        "tasks": [
            {
                "source": str(t.source),
                "target": str(t.target),
                "reason": t.reason,
                "trusted": t.trusted,
                "source_digest": t.source_digest,
                "target_digest": t.target_digest,
            }
            for t in p.plan.tasks
        ],
        "copied": [_image_json(r) for r in p.results],
        # A dry run's images that would be copied, with the referrers found for each.
        "planned": [_image_json(r) for r in p.planned],
        "referrer_checks": [
            {
                "source": r.source,
                "target": r.destination,
                "status": r.status,
                "error": r.error,
                "referrers": [x.to_json() for x in r.referrers],
            }
            for r in p.referrer_checks
        ],
        "errors": p.failed,
        "would_create": p.would_create,
    }


def run(
    config: ConfigOpt = None,
    state: StateOpt = None,
    target_registry: TargetRegistry = None,
    registry_endpoint: RegistryEndpoint = None,
    trust_state: TrustStateOpt = False,
    execution: ExecutionOpt = None,
) -> None:
    """The daemon: each mirror on its own schedule until SIGTERM (SIGHUP reloads the config)."""
    import asyncio

    from ..errors import OcimirrorError
    from ..settings.connection import apply_endpoint_flags
    from .daemon import Daemon

    config = _config_or_ini(config)
    try:
        apply_endpoint_flags(registry_endpoint)
        daemon = Daemon(
            config,
            state_url=state,
            target_registry=target_registry,
            trust_state=trust_state or None,
            execution=_execution(execution),
        )
    except OcimirrorError as e:
        raise _fail(str(e)) from None
    _configure_logs(daemon.config)
    raise typer.Exit(asyncio.run(daemon.run()))


def status(
    config: ConfigOpt = None, state: StateOpt = None, target_registry: TargetRegistry = None
) -> None:
    """Table: mirror, target, last run, result, digest mirrored, next run."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from ..errors import OcimirrorError
    from ..settings.loading import load_config
    from ..state.connection import default_url
    from ..state.db import StateDB

    config = _config_or_ini(config)
    try:
        cfg = load_config(config, target_registry=target_registry).config
    except OcimirrorError as e:
        raise _fail(str(e)) from None
    url = state or cfg.state or default_url(config)

    async def go() -> list[tuple[str, ...]]:
        async with StateDB(url) as db:
            return await status_rows(cfg, db, datetime.now(UTC))

    try:
        rows = asyncio.run(go())
    except OcimirrorError as e:
        raise _fail(str(e)) from None
    table = Table("mirror", "target", "last run", "result", "digest", "next run")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


async def status_rows(cfg: Config, db: StateDB, now: datetime) -> list[tuple[str, ...]]:
    """The rows of `status` (rich markup), from two queries whatever the runs and tags.

    The database counts the tags under each target (and gives the digest when there is
    one): nothing per tag or per run is read into Python.
    """
    from rich.markup import escape

    from ..errors import OcimirrorError
    from ..reference import Reference
    from ..settings.schedule import schedule_of

    def repo_of(target: str) -> str:
        try:
            return str(Reference.parse(target).repository_only())
        except OcimirrorError:
            return target

    runs = await db.last_runs([m.label for m in cfg.mirrors])
    # A target is a repository, or a prefix when the source is a list.
    under = await db.synced_under([(m.label, repo_of(t)) for m in cfg.mirrors for t in m.targets])
    rows: list[tuple[str, ...]] = []
    for m in cfg.mirrors:
        run = runs.get(m.label)
        schedule = schedule_of(m)
        last = (run.finished_at or run.started_at) if run else None
        upcoming = not schedule.on_demand and not schedule.once
        nxt = schedule.next_run(now, last_run=last) if upcoming else None
        result = "-"
        if run:
            colour = {"ok": "green", "partial": "yellow"}.get(run.status, "red")
            result = f"[{colour}]{escape(run.status)}[/]"
            if run.error:
                result += f": {escape(run.error)}"
        for target in m.targets:
            count, digest = under.get((m.label, repo_of(target)), (0, None))
            cell = "-" if not count else f"{count} tags" if count > 1 else str(digest)[:19]
            rows.append(
                (
                    escape(m.label),
                    escape(target),
                    last.strftime("%Y-%m-%d %H:%M") if last else "never",
                    result,
                    cell,
                    nxt.strftime("%Y-%m-%d %H:%M") if nxt else schedule.describe(),
                )
            )
    return rows
