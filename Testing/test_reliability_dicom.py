"""DICOM folders: a corrupt file is named, never silently filled; with several series the choice is said
and can be made (issue 15, item 7)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from SculptorGANLib.cli import main
from SculptorGANLib.core.errors import InputError
from SculptorGANLib.io import read_ct
from conftest import write_dicom_series


def _series(folder, n=6, uid="1.2.3.4"):
    """``n`` axial 12x12 CT slices 2 mm apart, one DICOM file each, in series ``uid``."""
    array = np.random.default_rng(0).normal(0, 40, (n, 12, 12)).astype(np.int16)
    return write_dicom_series(folder, array, (1.0, 1.0), [2.0 * i for i in range(n)], series_uid=uid)


def test_corrupt_file_in_a_series_is_named(tmp_path):
    folder = _series(tmp_path / "dcm")
    bad = sorted(folder.glob("*.dcm"))[3]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: GDCM drops it from the series
    with pytest.raises(InputError, match=bad.name):
        read_ct(folder)


def test_two_series_the_choice_is_reported_and_can_be_made(tmp_path, capsys):
    folder = _series(tmp_path / "two", n=6, uid="1.2.3.4")
    other = _series(tmp_path / "b", n=4, uid="1.2.3.5")
    for f in other.iterdir():
        f.rename(folder / f"B{f.name}")
    ct = read_ct(folder)
    assert ct.shape[0] == 6 and ct.meta["series_instance_uid"] == "1.2.3.4"
    assert ct.meta["other_series"] == {"1.2.3.5": 4}
    assert read_ct(folder, series="1.2.3.5").shape[0] == 4
    with pytest.raises(InputError, match="1.2.3.9"):
        read_ct(folder, series="1.2.3.9")
    assert main(["run", str(folder), "--out", str(tmp_path / "o"), "--steps", "interpolate", "--quiet"]) == 0
    text = capsys.readouterr()
    assert "1.2.3.4" in text.out + text.err and "--series" in text.out + text.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["input"]["series_instance_uid"] == "1.2.3.4"
    assert main(["run", str(folder), "--series", "1.2.3.5", "--out", str(tmp_path / "o2"), "--steps",
                 "interpolate", "--quiet"]) == 0
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["input"]["shape_zyx"][0] == 4
