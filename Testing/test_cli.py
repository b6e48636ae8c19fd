"""The sculptorgan command: demo outputs, run on a file, stage sub-commands, help texts."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from SculptorGANLib.cli import build_parser, main
from SculptorGANLib.io.volumes import read_ct, read_labels, write_volume
from SculptorGANLib.synthetic.phantom import thick_slices

COMMANDS = ["demo", "run", "interpolate", "segment", "surfaces", "evaluate", "batch", "models"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sculptorgan " + command in capsys.readouterr().out


def test_parser_lists_all_commands():
    choices = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert set(COMMANDS) <= set(choices)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "result"
    result = subprocess.run([sys.executable, "-m", "SculptorGANLib", "demo", "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"Results in {out}" in result.stdout
    return out


def test_demo_writes_every_output(demo_dir):
    names = {p.name for p in demo_dir.iterdir()}
    expected = {"ct.nii.gz", "segmentation.nii.gz", "segmentation.seg.nrrd", "kidney_left.stl",
                "kidney_right.stl", "tumor.stl", "report.json", "preview.png", "measurements.csv"}
    assert expected <= names, expected - names
    assert not [n for n in names if "partial" in n]


def test_readme_output_table_lists_every_file_the_demo_writes(demo_dir):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Outputs of `run` and `demo`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([^`]+\.[a-z.]+)`", table))
    assert {p.name for p in demo_dir.iterdir()} <= documented


def test_demo_summary_prints_true_volumes_and_named_dice(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    scores = report["demo"]["scores_vs_ground_truth"]
    assert {"dice_kidney_kits", "dice_kidney_tissue", "dice_tumor"} <= set(scores)
    assert set(report["demo"]["score_definitions"]) == {"dice_kidney_kits", "dice_kidney_tissue", "dice_tumor"}


def test_demo_report_and_geometry(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    for key in ("input", "steps", "methods", "device", "timings_s", "volumes_ml", "software", "measurements"):
        assert key in report
    assert report["input"]["spacing"][2] == 5.0 and report["output_volume"]["spacing"][2] == 2.5
    assert report["input"]["missing_slices"]
    ct = read_ct(demo_dir / "ct.nii.gz")
    labels = read_labels(demo_dir / "segmentation.nii.gz")
    seg = read_labels(demo_dir / "segmentation.seg.nrrd")
    assert ct.same_grid(labels) and ct.same_grid(seg)
    assert np.array_equal(seg.array, labels.array)  # the .seg.nrrd reads back, by segment name, as the labelmap
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert report["volumes_ml"]["kidney_left"] > 50
    scores = report["demo"]["scores_vs_ground_truth"]
    assert scores["dice_kidney_kits"] > 0.7  # kidney + tumor, as `evaluate` scores it
    assert set(report["demo"]["true_volumes_ml"]) == {"kidney_left", "kidney_right", "tumor"}
    assert (demo_dir / "preview.png").stat().st_size > 10_000


def test_run_and_stage_commands_on_a_file(tmp_path, small_phantom, capsys):
    ct, _ = small_phantom
    src = write_volume(thick_slices(ct, 2), tmp_path / "thick.nrrd")
    snapshot = src.read_bytes()
    assert main(["run", str(src), "--out", str(tmp_path / "run"), "--factor", "2", "--format", "obj",
                 "--nrrd", "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "run" / "kidney_left.obj").exists() and (tmp_path / "run" / "ct.nrrd").exists()
    assert main(["interpolate", str(src), str(tmp_path / "thin.nii.gz"), "--target-spacing", "2.5",
                 "--method", "linear", "--quiet"]) == 0
    thin = read_ct(tmp_path / "thin.nii.gz")
    assert thin.spacing[2] == pytest.approx(2.5) and thin.shape[0] == (ct.shape[0] // 2 - 1) * 4 + 1
    assert main(["segment", str(src), str(tmp_path / "seg.seg.nrrd"), "--quiet"]) == 0
    assert main(["surfaces", str(tmp_path / "run" / "segmentation.nii.gz"), str(tmp_path / "models"),
                 "--ct", str(tmp_path / "run" / "ct.nii.gz"), "--ras", "--quiet"]) == 0
    assert (tmp_path / "models" / "kidney_right.stl").exists()
    assert src.read_bytes() == snapshot
    out = capsys.readouterr().out
    assert "kidney_left" in out


def test_models_command_lists_cards(capsys):
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert all({"name", "task", "sha256"} <= set(c) for c in cards)


def test_segment_options_reach_the_stage(monkeypatch, tmp_path, small_phantom):
    import SculptorGANLib.segment.stage as segmentation

    seen = {}
    real = segmentation.segment

    def spy(ct, **kwargs):
        seen.update(kwargs)
        return real(ct, **kwargs)

    monkeypatch.setattr(segmentation, "segment", spy)
    src = write_volume(small_phantom[0], tmp_path / "ct.nii.gz")
    assert main(["segment", str(src), str(tmp_path / "s.nii.gz"), "--no-postprocess", "--morph-mm", "2",
                 "--overlap", "0.5", "--device", "cpu", "--quiet"]) == 0
    assert seen["postprocess"] is False and seen["morph_mm"] == 2.0 and seen["device"] == "cpu"
    assert seen["overlap"] == 0.5
    assert main(["segment", str(src), str(tmp_path / "t.nii.gz"), "--morph-mm", "-1", "--quiet"]) == 2
    assert main(["segment", str(src), str(tmp_path / "t.nii.gz"), "--overlap", "2", "--quiet"]) == 2
    assert not (tmp_path / "t.nii.gz").exists()
