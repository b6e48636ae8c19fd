"""Outputs appear only when complete; failures leave nothing behind."""
from __future__ import annotations

import pytest

from SculptorGANLib.core.errors import OutputError
from SculptorGANLib.io.atomic import MARKER, staged_output_dir, staged_output_file


def test_folder_appears_only_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output_dir(out) as stage:
            (stage / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_output_dir(out) as stage:
        (stage / "done.txt").write_text("ok")
    assert (out / "done.txt").read_text() == "ok" and len(list(tmp_path.iterdir())) == 1
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "done.txt"]


def test_existing_user_folder_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="not a SculptorGAN result folder"):
        with staged_output_dir(out) as stage:
            (stage / "new.txt").write_text("new")
    assert {p.name for p in out.iterdir()} == {"mine.txt"} and len(list(tmp_path.iterdir())) == 1
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert {p.name for p in out.iterdir()} == {"new.txt", MARKER}


def test_file_output(tmp_path):
    target = tmp_path / "vol.nii.gz"
    with pytest.raises(ValueError):
        with staged_output_file(target) as tmp:
            assert tmp.name.endswith(".nii.gz")
            tmp.write_text("partial")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="is a folder"):
        with staged_output_file(tmp_path):
            pass
