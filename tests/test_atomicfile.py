"""Atomic file writes: the new content appears whole under the final name, or nothing does."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocimirror.atomicfile import TEMP_PREFIX, commit_temp, discard_temp, open_temp, write_atomic


def test_write_atomic_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_a_streamed_temporary_is_committed_or_discarded(tmp_path: Path) -> None:
    tmp, f = open_temp(tmp_path)
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(TEMP_PREFIX)
    f.write(b"blob")
    assert not (tmp_path / "blob").exists()  # nothing under the final name until committed
    commit_temp(f, tmp, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == b"blob"
    assert not tmp.exists()

    tmp2, f2 = open_temp(tmp_path)
    assert tmp2 != tmp
    f2.write(b"half")
    discard_temp(f2, tmp2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]
