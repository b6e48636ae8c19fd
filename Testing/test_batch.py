"""Cohort processing (`sculptorgan batch`): phantoms plus a corrupt input, reruns, CSV lists, sharding."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SculptorGANLib.cli import main as cli_main
from SculptorGANLib.batch.runner import discover_cases, run_batch, shard
from SculptorGANLib.core.errors import InputError
from SculptorGANLib.io.volumes import read_labels, write_volume
from SculptorGANLib.synthetic.phantom import make_phantom
from SculptorGANLib.pipeline import PipelineOptions
from SculptorGANLib.outputs.results import OutputOptions

from conftest import write_dicom_series

REPO = Path(__file__).resolve().parents[1]
# Small phantoms and the classical methods (cubic, threshold) keep every case well under a second on a
# 2-core machine; what is tested here is the cohort machinery, not the networks.
OPTIONS = PipelineOptions(steps=("interpolate", "segment"), factor=2, device="cpu", interpolation_method="cubic",
                          segmentation_model="threshold")
OUTPUT = OutputOptions(preview=False)
CLI_ARGS = ["--steps", "interpolate,segment", "--factor", "2", "--method", "cubic", "--model", "threshold",
            "--no-preview", "--quiet", "--device", "cpu"]


def _cohort(folder: Path, n: int = 3, corrupt: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        ct, _ = make_phantom(shape=(24, 64, 64), spacing=(5.0, 5.0, 5.0), seed=seed)
        write_volume(ct, folder / f"case{seed}.nii.gz")
    if corrupt:
        (folder / "broken.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    (folder / "notes.txt").write_text("not a volume, ignored")
    return folder


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return _cohort(tmp_path_factory.mktemp("cohort") / "in")


def test_discover_folder_csv_and_unique_ids(tmp_path, cohort):
    cases = discover_cases(cohort)
    assert [c.case_id for c in cases] == ["broken", "case0", "case1", "case2"]
    series = tmp_path / "series"
    (series / "patient 1").mkdir(parents=True)
    (series / "patient 1" / "IM0001").write_bytes(b"x")
    (series / "case0.nii.gz").write_bytes(b"x")
    (series / "sub").mkdir()
    (series / "sub" / "case0.nii.gz").write_bytes(b"x")
    found = discover_cases(series)
    assert [c.case_id for c in found] == ["case0", "patient_1", "sub"]  # DICOM folders by name, unsafe chars gone
    listing = tmp_path / "list.csv"
    listing.write_text(f"case,path\nA,{cohort / 'case0.nii.gz'}\nA,in/case1.nii.gz\n,{cohort / 'case2.nii.gz'}\n")
    found = discover_cases(listing)
    assert [c.case_id for c in found] == ["A", "A__2", "case2"]
    assert found[1].source == str(tmp_path / "in" / "case1.nii.gz")  # relative to the CSV
    with pytest.raises(InputError, match="no such file"):
        discover_cases(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no volumes"):
        discover_cases(tmp_path / "empty")
    assert shard(list(range(7)), 1, 3) == [1, 4]


def test_batch_with_corrupt_input_and_rerun(tmp_path, cohort, monkeypatch):
    out = tmp_path / "out"
    summary = run_batch(cohort, out, OPTIONS, output_options=OUTPUT)
    rows = {r["case"]: r for r in _rows(out / "summary.csv")}
    assert [r["case"] for r in summary.rows] == ["broken", "case0", "case1", "case2"]
    assert {k: r["status"] for k, r in rows.items()} == {"broken": "failed", "case0": "ok", "case1": "ok", "case2": "ok"}
    assert "cannot be read as an image volume" in rows["broken"]["reason"]
    assert rows["broken"]["output"] == "" and not (out / "broken").exists()
    for name in ("case0", "case1", "case2"):
        assert (out / name / "report.json").is_file() and (out / name / "segmentation.nii.gz").is_file()
        assert float(rows[name]["volume_kidney_right_ml"]) > 10
        assert float(rows[name]["seconds_total"]) > 0 and rows[name]["seconds_segment"] != ""
    mtime = (out / "case1" / "segmentation.nii.gz").stat().st_mtime_ns

    # Rerun: finished cases are skipped (outputs untouched, volumes kept), the failed one is tried again.
    summary = run_batch(cohort, out, OPTIONS, output_options=OUTPUT)
    assert summary.processed == ["broken"]
    assert [r["status"] for r in summary.rows] == ["failed", "skipped", "skipped", "skipped"]
    assert (out / "case1" / "segmentation.nii.gz").stat().st_mtime_ns == mtime
    assert _rows(out / "summary.csv")[2]["volume_kidney_right_ml"] == rows["case1"]["volume_kidney_right_ml"]

    # A crash inside a stage (not a user error) is recorded too, and the remaining cases still run.
    import SculptorGANLib.pipeline as pipeline

    real = pipeline.run_pipeline

    def flaky(ct, options=None, progress=None, cancel=None):
        if ct.name == "case0":
            raise RuntimeError("simulated crash\nwith a second line")
        return real(ct, options, progress, cancel)

    monkeypatch.setattr(pipeline, "run_pipeline", flaky)
    summary = run_batch(cohort, out, OPTIONS, output_options=OUTPUT, force=True)
    statuses = {r["case"]: (r["status"], r["reason"]) for r in summary.rows}
    assert statuses["case0"] == ("failed", "RuntimeError: simulated crash with a second line")
    assert statuses["case2"][0] == "ok" and summary.processed == ["broken", "case0", "case1", "case2"]


def test_cli_exit_codes_progress_and_manual_shards(tmp_path, cohort, capsys):
    out = tmp_path / "out"
    calls = []
    summary = run_batch(cohort, out / "all", OPTIONS, output_options=OUTPUT, progress=lambda f, m: calls.append(f))
    assert calls[-1] == 1.0 and all(0 <= f <= 1 for f in calls) and calls == sorted(calls)  # monotone overall bar
    assert summary.count("ok") == 3

    # Manual sharding (e.g. a SLURM array): rank 1 of 2 takes cases 1 and 3 of the sorted list only.
    assert cli_main(["batch", str(cohort), "--out", str(out / "shard"), "--rank", "1", "--world-size", "2", *CLI_ARGS]) == 0
    rows = _rows(out / "shard" / "summary.csv")
    assert [(r["case"], r["status"]) for r in rows] == [("broken", "pending"), ("case0", "ok"),
                                                         ("case1", "pending"), ("case2", "ok")]
    # The other shard completes the summary; a failed case gives exit code 3 and a one-line reason.
    assert cli_main(["batch", str(cohort), "--out", str(out / "shard"), "--rank", "0", "--world-size", "2", *CLI_ARGS]) == 3
    assert [r["status"] for r in _rows(out / "shard" / "summary.csv")] == ["failed", "ok", "ok", "ok"]
    err = capsys.readouterr().err
    assert "failed: broken:" in err
    assert cli_main(["batch", str(tmp_path / "missing"), "--out", str(out / "x"), *CLI_ARGS]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_equal_single_process(tmp_path, cohort):
    """Cases sharded over 2 torchrun ranks give the same files and summary as one process."""
    single = run_batch(cohort, tmp_path / "single", OPTIONS, output_options=OUTPUT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "SculptorGANLib", "batch", str(cohort), "--out", str(tmp_path / "ddp"), *CLI_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(tmp_path / "ddp" / "summary.csv")
    assert [r["rank"] for r in rows] == ["0", "1", "0", "1"]  # each case ran on exactly one rank
    keys = ["case", "status", "reason", "volume_kidney_right_ml"]
    assert [{k: r[k] for k in keys} for r in rows] == [{k: str(r[k]) for k in keys} for r in single.rows]
    for name in ("case0", "case1", "case2"):
        a = read_labels(tmp_path / "single" / name / "segmentation.nii.gz")
        b = read_labels(tmp_path / "ddp" / name / "segmentation.nii.gz")
        assert np.array_equal(a.array, b.array) and a.geometry == b.geometry


def test_sculptorgan_cli_batch(tmp_path, cohort, capsys):
    """`sculptorgan batch` is a sub-command of the CLI (a missing registration fails, never skips)."""
    import argparse

    from SculptorGANLib import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "batch" in commands, "build_parser does not register the batch sub-command"
    assert cli.main(["batch", str(cohort / "case0.nii.gz"), str(cohort / "case2.nii.gz"), "--out", str(tmp_path / "o"),
                     *CLI_ARGS]) == 0
    assert "2 case(s): 2 ok" in capsys.readouterr().out


def test_dicom_series_folder_and_csv_list(tmp_path, cohort):
    """A DICOM series sub-folder is one case; a CSV list can mix it with files and name the outputs."""
    ct, _ = make_phantom(shape=(24, 64, 64), spacing=(5.0, 5.0, 5.0), seed=1)
    positions = [ct.geometry.origin[2] + 5.0 * i for i in range(ct.shape[0])]
    write_dicom_series(tmp_path / "in" / "patient_7", ct.array, (5.0, 5.0), positions, ct.geometry.origin[:2])
    assert [c.case_id for c in discover_cases(tmp_path / "in")] == ["patient_7"]
    listing = tmp_path / "cases.csv"
    listing.write_text(f"path,case\nin/patient_7,dicom_case\n{cohort / 'case1.nii.gz'},nifti_case\nin/gone.nii.gz,gone\n")
    summary = run_batch(listing, tmp_path / "out", OPTIONS, output_options=OUTPUT)
    rows = {r["case"]: r for r in summary.rows}
    assert rows["dicom_case"]["status"] == "ok" and rows["nifti_case"]["status"] == "ok"
    assert rows["gone"]["status"] == "failed" and "no such file" in rows["gone"]["reason"]
    # the DICOM series and the NIfTI of the same phantom give the same kidney volume
    assert rows["dicom_case"]["volume_kidney_right_ml"] == pytest.approx(rows["nifti_case"]["volume_kidney_right_ml"], rel=0.02)
