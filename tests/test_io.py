"""megl.io.atomic_dir: the one atomic-folder helper (stand-ins, unpacked zips, text models, plot data)."""
from __future__ import annotations

import pytest

from megl.io import atomic_dir


@pytest.mark.parametrize("existing", ["absent", "empty", "folder", "file"])
def test_atomic_dir_replaces_whatever_is_there(tmp_path, existing):
    out = tmp_path / "out"
    if existing == "empty":
        out.mkdir()
    elif existing == "folder":
        out.mkdir()
        (out / "old.txt").write_text("old")
    elif existing == "file":
        out.write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left behind


def test_atomic_dir_keeps_the_old_folder_when_the_writer_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "old.txt").read_text() == "old" and not (out / "half.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
