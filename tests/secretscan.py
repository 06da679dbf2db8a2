"""The suite's secrets scan (issue 18), loaded by conftest.py for every run.

Every password, token and key the suite uses must never appear in anything ocimirror
says. The secrets are known from the testkit (`ocimirror.testkit.secrets`: registry and
token-server users, the S3 stand-in's keys) and from each test module's constants whose
name says secret (`TOKEN`, `SECRET`, `PASSWORD`, `KEY`...; collected when the module is).
What is scanned:

- what the testkit saw ocimirror say: a command's stdout and stderr (`--json` output and
  error messages), a background `serve` / `proxy` process's log when it ends, the body of
  every answer got through the testkit's or test_serve's `call` (API answers, metrics,
  dashboard pages);
- what pytest captured in each phase of each test: stdout, stderr and log records
  (in-process logging, `caplog` included).

A secret found fails the phase it was found in (setup, call or teardown), naming where
it was seen (the secret masked). A test that must show a secret (none should) is marked
`secrets_expected`. The run ends with a one-line summary of what was scanned.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

import pytest

from ocimirror.testkit import secrets

#: What the scan found, and failed a test for.
REPORTED: list[secrets.Finding] = []
#: Module constants taken for secrets: an upper-case name naming one.
SECRET_NAME = re.compile(r"^[A-Z0-9_]*(TOKEN|SECRET|PASSWORD|PASSWD|KEY)[A-Z0-9_]*$")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker."""
    config.addinivalue_line(
        "markers", "secrets_expected: this test's output may show a secret (the scan skips it)"
    )


def register_module(module: Any) -> None:
    """Register a test module's secret-named string constants (and Basic pairs' passwords)."""
    for name, value in vars(module).items():
        if SECRET_NAME.match(name) and isinstance(value, str):
            secrets.register(value)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Know every collected module's secrets before the first test runs."""
    seen: set[int] = set()
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and id(module) not in seen:
            seen.add(id(module))
            register_module(module)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Scan what this phase captured; fail the phase on any secret found in it."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    for title, content in report.sections:
        if title.endswith(f" {call.when}") and title.startswith("Captured"):
            secrets.scan(content, f"{title.lower()} of {item.nodeid}")
    found = secrets.take_found()
    if not found or item.get_closest_marker("secrets_expected") is not None:
        return
    REPORTED.extend(found)
    lines = "\n".join(f"  {f}" for f in found)
    text = f"a secret of the test suite was found in what ocimirror said:\n{lines}"
    report.sections.append(("secrets scan", text))
    if report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = text


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line: how many secrets, how much text scanned, how many found (and failed)."""
    s = secrets.stats
    terminalreporter.write_line(
        f"secrets scan: {len(secrets.known())} secrets looked for in {s.texts} texts"
        f" ({s.characters / 1e6:.1f} MB); found {len(REPORTED)}"
    )
