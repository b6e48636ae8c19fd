"""Every output tells the truth (issue 15, 'Outputs that tell the truth')."""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SculptorGANLib.cli import build_parser, main
from SculptorGANLib.core.volume import KIDNEY, TUMOR, CTVolume, Geometry, LabelVolume
from SculptorGANLib.io import write_volume

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ----------------------------------------------------------------------------- which method made the slices
def _report(tmp_path, info: dict) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"methods": {"interpolate": info}, "timings_s": {"interpolate": 1.0}}))
    return path


def test_console_names_the_method_of_every_slice(tmp_path, capsys):
    from SculptorGANLib.cli.common import print_summary

    print_summary(_report(tmp_path, {"method": "gan", "slices_by_method": {"gan": 0, "cubic": 39, "acquired": 40}}))
    line = next(l for l in capsys.readouterr().out.splitlines() if "interpolate" in l)
    assert "gan" not in line and "cubic 39" in line
    print_summary(_report(tmp_path, {"method": "gan", "slices_by_method": {"gan": 30, "cubic": 9}}))
    line = next(l for l in capsys.readouterr().out.splitlines() if "interpolate" in l)
    assert "gan 30" in line and "cubic 9" in line


def test_console_without_slices_by_method_never_claims_gan(tmp_path, capsys):
    from SculptorGANLib.cli.common import print_summary

    info = {"method": "gan", "input_slices": 40, "output_slices": 79, "filled_missing": [],
            "cubic_fallback_slices_gap_too_wide": 0, "cubic_fallback_slices_gap_too_narrow": 39}
    print_summary(_report(tmp_path, info))
    line = next(l for l in capsys.readouterr().out.splitlines() if "interpolate" in l)
    assert "gan" not in line and "cubic" in line


# ----------------------------------------------------------------------------- one kidney Dice
def test_demo_and_evaluate_share_the_kits_kidney_dice():
    from SculptorGANLib.demo import score_against_truth
    from SculptorGANLib.measure.evaluation import evaluate_pair
    from SculptorGANLib.pipeline import PipelineResult

    ct = CTVolume(np.zeros((8, 16, 16), np.float32))
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 4:12, 4:12] = KIDNEY
    truth[3:5, 6:9, 6:9] = TUMOR
    pred = truth.copy()
    pred[pred == TUMOR] = KIDNEY  # the tumor missed, its voxels called kidney
    truth_labels, pred_labels = LabelVolume(truth), LabelVolume(pred)
    scores = score_against_truth(PipelineResult(input=ct, ct=ct, labels=pred_labels), ct, truth_labels)
    evaluated = evaluate_pair(pred_labels, truth_labels)
    assert scores["dice_kidney_kits"] == pytest.approx(evaluated["kidney"]["dice"]) == pytest.approx(1.0)
    assert scores["dice_kidney_tissue"] < 1.0 and scores["dice_tumor"] == 0.0


# ----------------------------------------------------------------------------- evaluate on differing grids
def test_evaluate_warns_when_grids_differ(tmp_path, capsys):
    array = np.zeros((8, 16, 16), np.uint8)
    array[2:6, 4:12, 4:12] = KIDNEY
    gt = write_volume(LabelVolume(array, Geometry((2, 2, 2))), tmp_path / "gt.nii.gz")
    other = write_volume(LabelVolume(array, Geometry((2, 2, 2), (300.0, 0, 0))), tmp_path / "other.nii.gz")
    code, text = _run(capsys, "evaluate", other, gt, "--out", tmp_path / "ev")
    assert code == 0 and "grids differ" in text and "do not overlap" in text and "other.nii.gz" in text
    summary = (tmp_path / "ev" / "summary.md").read_text()
    assert "do not overlap" in summary
    code, text = _run(capsys, "evaluate", gt, gt, "--out", tmp_path / "ev2")
    assert code == 0 and "grids differ" not in text


# ----------------------------------------------------------------------------- nothing found
def test_no_kidney_found_is_said_and_csv_keeps_its_header(tmp_path, capsys):
    air = CTVolume(np.full((12, 40, 40), -1000.0, np.float32), Geometry((5.0, 5.0, 5.0)))
    path = write_volume(air, tmp_path / "air.nii.gz")
    code, text = _run(capsys, "run", path, "--out", tmp_path / "o", "--steps", "segment,surfaces", "--quiet",
                      "--model", "threshold")
    assert code == 0 and "no kidney found" in text.lower()
    with open(tmp_path / "o" / "measurements.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ["structure", "volume_ml", "voxels"] and len(rows) == 1


# ----------------------------------------------------------------------------- preview
def test_preview_is_large_with_distinct_colours_per_structure(tmp_path):
    import matplotlib.image as mpimg

    from SculptorGANLib.core.structures import PREVIEW_COLORS
    from SculptorGANLib.outputs.preview import write_preview
    from SculptorGANLib.phantom import make_phantom

    colours = [PREVIEW_COLORS[n] for n in ("kidney_left", "kidney_right", "tumor")]
    assert len(set(colours)) == 3
    ct, labels = make_phantom(shape=(24, 48, 48), spacing=(5.0, 5.0, 5.0), seed=2)
    from SculptorGANLib.core.anatomy import crops_to_full, structure_crops

    masks = crops_to_full(structure_crops(labels, ct.array), labels.shape)
    png = mpimg.imread(write_preview(ct, labels, masks, tmp_path / "p.png"))
    assert png.shape[1] >= 1600 and png.shape[0] >= 500
    rgb = (png[..., :3] * 255).round().astype(int)
    for colour in colours:  # every structure's colour is drawn (contours and legend)
        target = np.round(np.asarray(colour) * 255).astype(int)
        assert (np.abs(rgb - target).max(axis=-1) <= 2).sum() > 20, colour


# ----------------------------------------------------------------------------- demo
def test_demo_summary_prints_the_true_tumor_volume(tmp_path, capsys):
    from SculptorGANLib.cli.common import print_summary

    path = tmp_path / "report.json"
    path.write_text(json.dumps({"methods": {}, "timings_s": {}, "volumes_ml": {"tumor": 20.0, "kidney_left": 100.0},
                                "demo": {"scores_vs_ground_truth": {"dice_tumor": 0.8},
                                         "true_volumes_ml": {"tumor": 25.5, "kidney_left": 101.0}}}))
    print_summary(path)
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("tumor"))
    assert "20.0" in line and "25.5" in line and "true" in line


# ----------------------------------------------------------------------------- batch
def test_batch_summary_carries_each_cases_notes(tmp_path):
    from SculptorGANLib.batch.records import summary_rows
    from SculptorGANLib.batch.cases import Case

    (tmp_path / ".status").mkdir()
    (tmp_path / ".status" / "p1.json").write_text(json.dumps({
        "case": "p1", "status": "ok", "notes": ["looks non-contrast (median kidney 40 HU): check the tumor label"]}))
    rows = summary_rows([Case("p1", "p1.nii.gz")], tmp_path)
    assert "non-contrast" in rows[0]["notes"]


def test_batch_refuses_cuda_without_a_gpu_before_any_case(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_volume(CTVolume(np.zeros((4, 8, 8), np.float32)), tmp_path / "p1.nii.gz")
    code, text = _run(capsys, "batch", tmp_path / "p1.nii.gz", "--out", tmp_path / "b", "--device", "cuda", "--quiet")
    assert code == 2 and "cuda" in text and not (tmp_path / "b").exists()


def test_batch_case_named_like_its_own_files_and_rerun_into_the_input_folder(tmp_path, capsys):
    ct = CTVolume(np.random.default_rng(0).normal(0, 50, (4, 12, 12)).astype(np.float32), Geometry((1, 1, 3)))
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_volume(ct, cohort / "summary.csv.nii.gz")
    write_volume(ct, cohort / "p1.nii.gz")
    args = ("--steps", "interpolate", "--factor", "2", "--method", "linear", "--quiet")
    for _ in range(2):
        code, text = _run(capsys, "batch", cohort, "--out", cohort, *args)
        assert code == 0, text
    with open(cohort / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["input"] for r in rows) == sorted(str(cohort / n) for n in ("p1.nii.gz", "summary.csv.nii.gz"))
    assert all(r["status"] in ("ok", "skipped") for r in rows)


# ----------------------------------------------------------------------------- models | head, --help, README
def test_models_json_piped_into_head_ends_cleanly():
    proc = subprocess.run(f"{sys.executable} -m SculptorGANLib models --json | head -1", shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("[") and proc.stderr.strip() == ""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_gives_every_options_meaning_and_default():
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings}: no help"
            if not action.required:  # flags too: what happens without them
                assert "default" in action.help, f"{name} {action.option_strings[0]}: help gives no default"


def test_readme_option_list_matches_the_program():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    documented: dict[str, set[str]] = {}
    command = ""
    for line in block.splitlines():
        if line.startswith("sculptorgan "):
            command = line.split()[1]
        documented.setdefault(command, set()).update(re.findall(r"--[a-z][a-z-]*", line))
    for name, sub in _subparsers(build_parser()).items():
        flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--")} - {"--help", "--debug", "--quiet"}
        assert documented.get(name, set()) == flags, name


def test_batch_case_notes_reach_summary_csv_end_to_end(tmp_path, monkeypatch):
    """A stage's notes (e.g. the non-contrast warning) go from the case's report into summary.csv."""
    import SculptorGANLib.pipeline as pipeline
    from SculptorGANLib.batch.runner import run_batch
    from SculptorGANLib.core.options import PipelineOptions

    real = pipeline.run_pipeline

    def noted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.methods["interpolate"]["notes"] = ["scan looks non-contrast: check the tumor label"]
        return result

    monkeypatch.setattr(pipeline, "run_pipeline", noted)
    ct = CTVolume(np.random.default_rng(0).normal(0, 50, (4, 12, 12)).astype(np.float32), Geometry((1, 1, 3)))
    write_volume(ct, tmp_path / "p1.nii.gz")
    options = PipelineOptions(steps=("interpolate",), factor=2, interpolation_method="linear", device="cpu")
    from SculptorGANLib.outputs.results import OutputOptions

    run_batch(tmp_path / "p1.nii.gz", tmp_path / "out", options, output_options=OutputOptions(preview=False))
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["status"] == "ok" and "interpolate: scan looks non-contrast" in row["notes"]
