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


def test_every_atomic_output_gets_the_usual_permissions_even_when_the_writer_recreates_the_file(tmp_path):
    """safetensors replaces the temp file with a 0600 one of its own: weights must still be readable
    by the group and others like every other output (mode 0666 minus the umask)."""
    import os

    import torch

    from megl.io import write_text
    from megl.runs import save_weights

    umask = os.umask(0o022)
    try:
        save_weights({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
        write_text(tmp_path / "notes.txt", "x")
    finally:
        os.umask(umask)
    assert oct((tmp_path / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "notes.txt").stat().st_mode & 0o777) == oct(0o644)
