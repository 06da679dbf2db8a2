"""The faces (sync, service, proxy) never import each other; settings and state import no face."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ocimirror

PACKAGE = Path(ocimirror.__file__).parent
FACES = ("sync", "service", "proxy")


def _imported(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """Return the ocimirror modules a source file imports (relative imports resolved)."""
    if package is None:
        package = path.relative_to(PACKAGE.parent).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            name = ".".join((*base, *(node.module.split(".") if node.module else ())))
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("ocimirror.")}


def _sources(part: str) -> list[Path]:
    return sorted((PACKAGE / part).rglob("*.py"))


@pytest.mark.parametrize("face", FACES)
def test_a_face_imports_no_other_face(face: str) -> None:
    others = tuple(f"ocimirror.{f}" for f in FACES if f != face)
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {m}"
        for path in _sources(face)
        for m in _imported(path)
        if m in others or m.startswith(tuple(f"{o}." for o in others))
    }
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("layer", ["settings", "state"])
def test_shared_layers_import_no_face(layer: str) -> None:
    faces = tuple(f"ocimirror.{f}" for f in (*FACES, "cli", "compose"))
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {m}"
        for path in _sources(layer)
        for m in _imported(path)
        if m in faces or m.startswith(tuple(f"{f}." for f in faces))
    }
    assert not wrong, sorted(wrong)


def test_the_checker_sees_cross_face_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from ..sync.daemon import Daemon\nfrom .. import proxy\nimport ocimirror.cli\n"
    )
    seen = _imported(source, ("ocimirror", "service"))
    assert {"ocimirror.sync.daemon", "ocimirror.proxy", "ocimirror.cli"} <= seen


#: Above this many lines a module says at its top why it is one module.
LONG = 600


def test_a_long_module_says_why_at_its_top() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testkit" in path.parts:
            continue
        text = path.read_text()
        if text.count("\n") <= LONG:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if "Why it is long" not in docstring:
            unexplained.append(f"{path.relative_to(PACKAGE)} ({text.count(chr(10))} lines)")
    assert not unexplained, unexplained
