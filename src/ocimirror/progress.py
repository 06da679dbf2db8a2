"""Progress displays for the copier: rich bars on a terminal, log lines elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from rich.markup import escape

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from .transfer.copy import ImageResult

log = structlog.get_logger("ocimirror")


class RichProgress:
    """Draws one bar for all bytes and one per image in flight, like a download manager."""

    def __init__(self, console: Console, total_images: int) -> None:
        # Imported here: output that is not a terminal gets LogProgress and needs none of it.
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=28),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.overall = self.bars.add_task(f"0/{total_images} images", total=None)
        self.total_images = total_images
        self.done = 0
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def image_started(self, source: str, destination: str) -> None:
        """Add a bar for an image."""
        self.tasks[destination] = self.bars.add_task(escape(_short(destination)), total=None)

    def image_sized(self, destination: str, total: int) -> None:
        """Grow an image's bar by the bytes one of its manifests needs."""
        tid = self.tasks.get(destination)
        if tid is not None:
            task = self.bars.tasks[tid]
            self.bars.update(tid, total=(task.total or 0) + total)
        overall = self.bars.tasks[self.overall]
        self.bars.update(self.overall, total=(overall.total or 0) + total)

    def bytes_moved(self, destination: str, n: int) -> None:
        """Advance an image's bar and the overall bar."""
        tid = self.tasks.get(destination)
        if tid is not None:
            self.bars.advance(tid, n)
        self.bars.advance(self.overall, n)

    def image_finished(self, result: ImageResult) -> None:
        """Remove an image's bar and print its outcome line."""
        tid = self.tasks.pop(result.destination, None)
        if tid is not None:
            self.bars.remove_task(tid)
        self.done += 1
        self.bars.update(self.overall, description=f"{self.done}/{self.total_images} images")
        self.console.print(outcome_line(result), highlight=False)


class LogProgress:
    """Logs one structured line per finished image (for pipes, files and CI logs)."""

    def image_started(self, source: str, destination: str) -> None:
        """Do nothing: a line per start would double the log."""

    def image_sized(self, destination: str, total: int) -> None:
        """Do nothing."""

    def bytes_moved(self, destination: str, n: int) -> None:
        """Do nothing."""

    def image_finished(self, result: ImageResult) -> None:
        """Log the image's outcome."""
        fields = {
            "source": result.source,
            "destination": result.destination,
            "digest": result.destination_digest or result.source_digest,
            "bytes": result.bytes_copied,
            "seconds": round(result.seconds, 3),
        }
        if result.filtered:
            fields["source_digest"] = result.source_digest
        if result.status == "failed":
            log.error("image failed", error=result.error, **fields)
        else:
            log.info(f"image {result.status}", **fields)


def outcome_line(result: ImageResult) -> str:
    """Return the one-line, human outcome of an image copy (rich markup)."""
    if result.status == "failed":
        return (
            f"[red]✗[/] {escape(result.source)} → {escape(result.destination)}:"
            f" {escape(result.error)}"
        )
    if result.status == "planned":
        found = len(result.referrers)
        return f"[cyan]→[/] {escape(result.destination)} would be copied ({found} referrers)"
    if result.status == "skipped":
        return f"[yellow]-[/] {escape(result.destination)} skipped ({escape(result.reason)})"
    mark = "[green]✓[/]" if result.status == "copied" else "[dim]=[/]"
    digest = result.destination_digest[:19]
    extra = ""
    if result.filtered:
        extra = f" (filtered from {result.source_digest[:19]}: {', '.join(result.platforms)})"
    size = f", {_human(result.bytes_copied)}" if result.bytes_copied else ""
    return f"{mark} {escape(result.destination)} {result.status} {digest}{size}{escape(extra)}"


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
