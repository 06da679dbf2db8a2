"""Debian's Chromium, headless, for tests that look at pages the way a person does.

Launched through Playwright with `executable_path` (never `playwright install`, which
downloads a browser of its own) and the flags this offline machine needs: without the
background-networking ones Chromium keeps trying to reach Google's hosts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


async def launch_chromium(pw: Playwright, profile: Path, **options: Any) -> BrowserContext:
    """A headless Chromium context with a fresh profile in `profile` (Playwright options)."""
    options.setdefault("viewport", {"width": 1280, "height": 900})
    return await pw.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=list(FLAGS), **options
    )
