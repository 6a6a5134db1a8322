"""safe.atomic: a file or folder written through it is complete or absent, never half written."""
from __future__ import annotations

import pytest

from safe.atomic import staged_dir, staged_file, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.html"
    write_atomic(path, "one\n")
    write_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_atomic(path, b"{}")
    with pytest.raises(RuntimeError), staged_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_staged_file_keeps_the_suffix_for_writers_that_read_it(tmp_path):
    with staged_file(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "x.png").read_bytes() == b"png"


def test_staged_dir_replaces_the_folder_only_when_complete(tmp_path):
    out = tmp_path / "base"
    with staged_dir(out, "building") as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), staged_dir(out, "building") as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("crash")
    assert [p.name for p in out.iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["base"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = write_atomic(tmp_path / "report.html", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others where the umask says so
