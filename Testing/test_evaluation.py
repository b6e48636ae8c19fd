"""evaluate_files: file pairs and folders -> per-case CSV/JSON, summary, box plots, comparison table."""
import json

import numpy as np
import pytest

from SculptorGANLib.core.errors import InputError
from SculptorGANLib.measure.evaluation import comparison_table, evaluate_files
from SculptorGANLib.io.volumes import write_volume
from SculptorGANLib.core.volume import Geometry, LabelVolume


def make_case(shift):
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 1
    lab[8:12, 8:12, 8:12] = 2
    pred = np.roll(lab, shift, axis=2)
    geo = Geometry((1.0, 1.0, 2.0))
    return LabelVolume(pred, geo), LabelVolume(lab, geo)


def test_folders_are_paired_and_results_written(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for i, shift in enumerate((0, 1, 2)):
        pred, gt = make_case(shift)
        write_volume(pred, tmp_path / "pred" / f"case_{i}.nii.gz")
        write_volume(gt, tmp_path / "gt" / f"case_{i}.nii.gz")
    out = tmp_path / "eval"
    summary = evaluate_files(tmp_path / "pred", tmp_path / "gt", out, name="test")
    assert summary["cases"] == 3
    assert summary["kidney"]["dice"]["n"] == 3
    per = {c["case"]: c for c in summary["per_case"]}
    assert per["case_0"]["kidney"]["dice"] == pytest.approx(1.0)
    assert per["case_1"]["kidney"]["dice"] == pytest.approx(0.9)  # 1-voxel shift of a 10-voxel cube
    assert per["case_2"]["kidney"]["hd"] == pytest.approx(2.0)  # x spacing 1 mm
    for name in ("per_case.csv", "per_case.json", "summary.json", "summary.md", "boxplot_kidney.png", "boxplot_tumor.png"):
        assert (out / name).is_file(), name
    assert len((out / "per_case.csv").read_text().strip().splitlines()) == 1 + 3 * 2
    assert json.loads((out / "summary.json").read_text())["name"] == "test"


def test_file_pair_and_comparison_table(tmp_path):
    pred, gt = make_case(1)
    write_volume(pred, tmp_path / "p.nii.gz")
    write_volume(gt, tmp_path / "g.nii.gz")
    s = evaluate_files(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz", tmp_path / "e", plots=False)
    table = comparison_table({"wpunet": s, "unet": s})
    assert "| wpunet |" in table and "| unet |" in table and "HD95" in table


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(InputError):
        evaluate_files(tmp_path / "missing", tmp_path / "also_missing", tmp_path / "e")
